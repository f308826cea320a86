"""DML through the ordinary machinery: a cohort student (models.cohort), the "dml" distiller,
the train and eval steps, 8 shards against one device, the trainer and the pair configs.

Tiny: the zoo's cohort of two resnet8 at 8x8 (registry, trainer), and a cohort of two
one-conv CNNs (steps_test.TinyCNN) for the steps, 4 classes, batch 16.
"""

from __future__ import annotations

import functools
import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from steps_test import TinyCNN

from luminet_jax import distillers, evaluation, models, optim, sharding, state, steps
from luminet_jax.distillers import dml
from luminet_jax.models import cohort

NUM_CLASSES, BATCH, SPE = 4, 16, 2


def _cohort(axis_name=None):
    members = [TinyCNN(num_classes=NUM_CLASSES, axis_name=axis_name) for _ in range(2)]
    return cohort.Cohort(members=tuple(members))


@functools.cache
def _setup():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(BATCH, 8, 8, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, NUM_CLASSES, BATCH), jnp.int32)
    variables = jax.jit(lambda k, x: _cohort().init(k, x, train=False))(jax.random.key(0), images)
    lr_fn = optim.make_schedule(base_lr=0.1, steps_per_epoch=SPE, decay_epochs=(2,))
    tx = optim.make_optimizer(learning_rate=lr_fn, momentum=0.9, weight_decay=5e-4)
    return variables, {"image": images, "label": labels}, tx, lr_fn


def _member_vars(variables, k):
    return {c: variables[c][f"members_{k}"] for c in ("params", "batch_stats")}


@functools.cache
def _single_device_run():
    """Two one-device DML steps from the initial state: (states, metrics), one compile."""
    variables, batch, tx, lr_fn = _setup()
    distiller = distillers.get_distiller("dml")
    step = jax.jit(
        steps.make_train_step(_cohort(), None, distiller, tx, steps_per_epoch=SPE, lr_fn=lr_fn)
    )
    states, metrics = [state.create_train_state(variables, tx)], []
    for _ in range(2):
        new_state, m = step(states[-1], None, batch)
        states.append(new_state)
        metrics.append(m)
    return states, metrics


@jax.jit
def _zoo_cohort(images):
    """The registry's cohort of two resnet8: variables, (logits, feats), each member alone."""
    zoo = models.get_model("resnet8", num_classes=NUM_CLASSES, peers="resnet8")
    variables = zoo.init(jax.random.key(0), images, train=False)
    single = models.get_model("resnet8", num_classes=NUM_CLASSES)
    members = [single.apply(_member_vars(variables, k), images, train=False) for k in range(2)]
    return variables, zoo.apply(variables, images, train=False), members


@pytest.mark.slow  # ~12 s; the default DML step test also trains and checks both members
def test_cohort_holds_both_members_and_returns_their_logits():
    _, batch, _, _ = _setup()
    variables, (logits, feats), members = _zoo_cohort(batch["image"])
    single = models.get_model("resnet8", num_classes=NUM_CLASSES)
    assert set(variables["params"]) == {"members_0", "members_1"}
    one = jax.eval_shape(lambda x: single.init(jax.random.key(0), x, train=False), batch["image"])
    for k in range(2):
        chex.assert_trees_all_equal_shapes(variables["params"][f"members_{k}"], one["params"])
    chex.assert_shape(feats["cohort_logits"], (2, BATCH, NUM_CLASSES))
    for k, (z_k, f_k) in enumerate(members):
        np.testing.assert_allclose(feats["cohort_logits"][k], z_k, rtol=1e-6, atol=1e-6)
        if k == 0:  # member 0 is the reported student: its logits and its own feats
            np.testing.assert_allclose(logits, z_k, rtol=1e-6, atol=1e-6)
            assert set(f_k) | {"cohort_logits"} == set(feats)
    # The two members start from different weights.
    assert not np.allclose(feats["cohort_logits"][0], feats["cohort_logits"][1])


@pytest.mark.integration  # heavy: the second tier
def test_dml_step_loss_equals_dml_loss_and_trains_both_members():
    variables, batch, _, _ = _setup()
    distiller = distillers.get_distiller("dml")
    assert (distiller.uses_teacher, distiller.uses_feats) == (False, True)
    (_, s1, _), (metrics, _) = _single_device_run()

    @jax.jit
    def loss_and_kl_grads(params):
        def parts(p):
            v = {"params": p, "batch_stats": variables["batch_stats"]}
            (_, feats), _ = _cohort().apply(v, batch["image"], train=True, mutable=["batch_stats"])
            return dml.dml_loss(list(feats["cohort_logits"]), batch["label"])

        return parts(params), jax.grad(lambda p: parts(p).parts["loss_kd"])(params)

    want, kl_grads = loss_and_kl_grads(variables["params"])
    np.testing.assert_allclose(metrics["loss"], want.total, rtol=1e-6)
    np.testing.assert_allclose(metrics["loss_ce"], want.parts["loss_ce"], rtol=1e-6)
    np.testing.assert_allclose(metrics["loss_kd"], want.parts["loss_kd"], rtol=1e-6)
    assert float(metrics["loss_kd"]) > 0.0
    # Gradients reach both members (of the KL part alone, too) and both move.
    for k in range(2):
        name = f"members_{k}"
        assert float(optax.global_norm(kl_grads[name])) > 1e-4, name
        delta = jax.tree.map(jnp.subtract, s1.params[name], variables["params"][name])
        assert float(optax.global_norm(delta)) > 1e-3, name
        assert not np.allclose(
            s1.batch_stats[name]["bn1"]["mean"], variables["batch_stats"][name]["bn1"]["mean"]
        )


@pytest.mark.integration  # heavy: the second tier
def test_eval_reports_every_member():
    variables, batch, _, _ = _setup()
    mask = jnp.asarray(np.arange(BATCH) < BATCH - 3, jnp.float32)  # 3 padded rows
    eval_step = jax.jit(steps.make_eval_step(_cohort()))
    result = evaluation.evaluate(eval_step, variables, [{**batch, "mask": mask}])
    single = TinyCNN(num_classes=NUM_CLASSES)
    for k in range(2):
        z, _ = single.apply(_member_vars(variables, k), batch["image"], train=False)
        hit = np.asarray(jnp.argmax(z, -1) == batch["label"])[: BATCH - 3]
        assert result[f"member{k}_top1"] == pytest.approx(hit.mean())
        assert 0.0 <= result[f"member{k}_top5"] <= 1.0
    assert result["member0_top1"] == result["top1"] and result["count"] == BATCH - 3
    # A plain model's sums gain nothing.
    plain = jax.jit(steps.make_eval_step(single))(_member_vars(variables, 0), batch)
    assert "member_correct1" not in plain


@pytest.mark.integration  # heavy: the second tier
def test_sharded_dml_step_equals_single_device():
    _, batch, tx, lr_fn = _setup()
    states, want_metrics = _single_device_run()
    mesh = sharding.make_mesh()
    assert mesh.devices.size == 8
    raw = steps.make_train_step(
        _cohort("data"),
        None,
        distillers.get_distiller("dml"),
        tx,
        steps_per_epoch=SPE,
        axis_name="data",
        lr_fn=lr_fn,
    )
    sharded = sharding.shard_train_step(raw, mesh)
    got_state = jax.device_put(jax.device_get(states[0]), sharding.replicated(mesh))
    global_batch = sharding.to_global(jax.device_get(batch), mesh)
    got_metrics = []
    for _ in range(2):
        got_state, m = sharded(got_state, None, global_batch)
        got_metrics.append(m)
    chex.assert_trees_all_close(got_metrics, want_metrics, atol=2e-5, rtol=2e-5)
    chex.assert_trees_all_close(got_state, states[-1], atol=2e-5, rtol=2e-5)
    # The sharded eval reports both members as the one-device eval does.
    variables = {"params": states[-1].params, "batch_stats": states[-1].batch_stats}
    want = jax.jit(steps.make_eval_step(_cohort()))(variables, batch)
    got = sharding.shard_eval_step(steps.make_eval_step(_cohort("data"), axis_name="data"), mesh)(
        jax.device_put(variables, sharding.replicated(mesh)), global_batch
    )
    chex.assert_trees_all_close(got, want)


def test_dml_without_a_cohort_student_says_so():
    distiller = distillers.get_distiller("dml")
    with pytest.raises(KeyError, match="peers"):
        distiller.init(jax.random.key(0), {"pooled": jnp.zeros((2, 4))}, None)
    with pytest.raises(ValueError, match="two members"):
        cohort.Cohort(members=(TinyCNN(num_classes=4),)).init(
            jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False
        )


@pytest.mark.parametrize(
    "config_name, student, peer, params",
    [
        ("cifar100_res32x4_res8x4", "resnet8x4", "resnet32x4", 1_233_540 + 7_433_860),
        ("cifar100_res56_res20", "resnet20", "resnet56", 278_324 + 861_620),
    ],
)
def test_pair_configs_build_a_dml_cohort(config_name, student, peer, params):
    config = importlib.import_module(f"configs.{config_name}").get_config("method=dml")
    assert dict(config.student) == {"name": student, "peers": peer}
    assert dict(config.distiller) == dict(name="dml", ce_weight=1.0, kd_weight=1.0, temperature=1.0)
    assert config.schedule.base_lr == 0.05 and config.optim.weight_decay == 5e-4
    distiller = distillers.get_distiller(**config.distiller)
    assert not distiller.uses_teacher
    model = models.get_model(**config.student, num_classes=100, axis_name="data")
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    assert sum(leaf.size for leaf in jax.tree.leaves(shapes["params"])) == params


@pytest.mark.integration
@pytest.mark.slow  # ~50 s of CPU (two compiles of the cohort step and eval)
def test_dml_run_end_to_end_evaluates_and_checkpoints_both_members(tmp_path):
    import image_data  # noqa: PLC0415 (PIL: only this test)
    from train_test import _config  # noqa: PLC0415

    from luminet_jax import checkpoint, metrics_io, train  # noqa: PLC0415

    data = image_data.colour_folder(tmp_path / "data", train=16, test=8)
    config = _config("kd", steps=3, data=data, eval_batch_size=32)
    config.distiller = dict(name="dml", ce_weight=1.0, kd_weight=1.0, temperature=1.0)
    config.student.peers = "resnet8"
    workdir = str(tmp_path / "dml")
    result = train.train_and_evaluate(config, workdir)
    assert result["steps"] == 3 and np.isnan(result["teacher_top1"])  # no teacher at all
    last = [r for r in metrics_io.read_metrics(workdir) if "eval/top1" in r][-1]
    assert last["step"] == 3
    assert last["eval/member0_top1"] == pytest.approx(last["eval/top1"])
    assert 0.0 <= last["eval/member1_top1"] <= 1.0 and "eval/member1_top5" in last
    assert result["best_top1"] == pytest.approx(last["eval/best_top1"])
    raw = checkpoint.Checkpointer(workdir).restore_raw()
    assert set(raw["params"]) == {"members_0", "members_1"}
    chex.assert_trees_all_close(raw["params"], jax.device_get(result["state"].params))
