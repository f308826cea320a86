"""Train/eval steps: sharded == one device, one compile, warmup through the step, float64."""

from __future__ import annotations

import dataclasses
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from luminet_jax import optim, sharding, state, steps
from luminet_jax.distillers import base

NUM_CLASSES = 5
GLOBAL_BATCH = 16
SPE = 2  # steps per epoch


class TinyCNN(nn.Module):
    """conv(4) -> BatchNorm -> relu -> mean pool -> dense: small, with batch statistics."""

    num_classes: int = NUM_CLASSES
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.Conv(4, (3, 3), name="conv1")(x)
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            axis_name=self.axis_name,
            name="bn1",
        )(x)
        pooled = jnp.mean(nn.relu(x), axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(pooled), {"pooled": pooled}


def _mean(x, axis_name):
    x = jnp.mean(x, axis=0)
    return x if axis_name is None else lax.pmean(x, axis_name)


def _ce(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


@dataclasses.dataclass(frozen=True)
class LumiNetDouble(base.Distiller):
    """LumiNet per DESIGN.md §1, returning PER-SHARD means (the step must pmean them)."""

    ce_weight: float = 2.0
    alpha: float = 3.0
    temperature: float = 4.0
    warmup_epochs: int = 2

    def loss(self, x):
        return self.double(x.s_logits, x.t_logits, x.labels, epoch=x.epoch, axis_name=x.axis_name)

    def double(self, s_logits, t_logits, labels, *, epoch, axis_name=None):
        def perceive(z):
            u = _mean(z, axis_name)
            v = _mean((z - u) ** 2, axis_name)
            return (z - u) / jnp.sqrt(v + 1e-5)

        log_ps = jax.nn.log_softmax(perceive(s_logits) / self.temperature)
        log_pt = jax.nn.log_softmax(perceive(t_logits) / self.temperature)
        kl = jnp.mean(jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1))
        ce = jnp.mean(_ce(s_logits, labels))
        kd = self.alpha**2 * kl
        ramp = jnp.minimum(epoch / self.warmup_epochs, 1.0)
        return base.LossOutput(self.ce_weight * ce + ramp * kd, {"loss_ce": ce, "loss_kd": kd})


@dataclasses.dataclass(frozen=True)
class VanillaDouble(base.Distiller):
    uses_teacher = False

    def loss(self, x):
        return self.double(x.s_logits, x.t_logits, x.labels, epoch=x.epoch, axis_name=x.axis_name)

    def double(self, s_logits, t_logits, labels, *, epoch, axis_name=None):
        assert t_logits is None
        ce = _mean(_ce(s_logits, labels), axis_name)
        return base.LossOutput(ce, {"loss_ce": ce})


def _real_distiller(name, **hparams):
    distillers = pytest.importorskip("luminet_jax.distillers")
    if not hasattr(distillers, "get_distiller"):
        pytest.skip("luminet_jax.distillers.get_distiller is not available yet")
    return distillers.get_distiller(name, **hparams)


DISTILLERS = {
    "luminet_double": lambda: LumiNetDouble(),
    "vanilla_double": lambda: VanillaDouble(),
    "luminet": lambda: _real_distiller(
        "luminet", ce_weight=2.0, alpha=3.0, temperature=4.0, warmup_epochs=2
    ),
    "kd": lambda: _real_distiller("kd", ce_weight=0.1, kd_weight=0.9, temperature=4.0),
}


def _setup(dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.normal(size=(GLOBAL_BATCH, 8, 8, 3)), dtype)
    labels = jnp.asarray(rng.integers(0, NUM_CLASSES, GLOBAL_BATCH), jnp.int32)
    init = jax.jit(functools.partial(TinyCNN().init, train=False))  # one compile, not per op
    cast = lambda tree: jax.tree.map(lambda a: a.astype(dtype), tree)
    s_vars = cast(init(jax.random.key(seed), images))
    t_vars = cast(init(jax.random.key(seed + 100), images))
    lr_fn = optim.make_schedule(base_lr=0.1, steps_per_epoch=SPE, decay_epochs=(2,))
    tx = optim.make_optimizer(learning_rate=lr_fn, momentum=0.9, weight_decay=5e-4)
    train_state = state.create_train_state(s_vars, tx)
    return train_state, t_vars, {"image": images, "label": labels}, tx, lr_fn


def _run(step_fn, train_state, t_vars, batch, n):
    metrics = []
    for _ in range(n):
        train_state, m = step_fn(train_state, t_vars, batch)
        metrics.append(m)
    return train_state, metrics


@pytest.mark.parametrize(
    "name",
    ["luminet_double", pytest.param("vanilla_double", marks=pytest.mark.slow), "luminet", "kd"],
)
@pytest.mark.integration  # heavy: the second tier
def test_sharded_step_equals_single_device_step(name):
    """Loss, metrics, new params/opt state/batch_stats: 8 shards == 1 device, 3 steps.

    Also proves the sharded step compiles once while the epoch (and lr, warmup) change.
    """
    chex.clear_trace_counter()  # its key is the source and call stack, shared by the params
    distiller = DISTILLERS[name]()
    train_state, t_vars, batch, tx, lr_fn = _setup()
    uses_teacher = distiller.uses_teacher
    if not uses_teacher:  # vanilla: no teacher module and no teacher variables at all
        t_vars = None
    teacher = TinyCNN() if uses_teacher else None
    single = jax.jit(
        steps.make_train_step(TinyCNN(), teacher, distiller, tx, steps_per_epoch=SPE, lr_fn=lr_fn)
    )
    mesh = sharding.make_mesh()
    assert mesh.devices.size == 8
    raw_step = steps.make_train_step(
        TinyCNN(axis_name="data"),
        TinyCNN(axis_name="data") if uses_teacher else None,
        distiller,
        tx,
        steps_per_epoch=SPE,
        axis_name="data",
        lr_fn=lr_fn,
    )
    sharded = sharding.shard_train_step(chex.assert_max_traces(raw_step, n=1), mesh)
    # 3 steps: crosses the epoch-2 boundary (lr decay, warmup ramp 0.5 -> 1).
    want_state, want_metrics = _run(single, train_state, t_vars, batch, 3)
    init = jax.device_get(train_state)  # the sharded step donates (and deletes) its input
    rep = sharding.replicated(mesh)
    got_state, got_metrics = _run(
        sharded,
        jax.device_put(train_state, rep),
        jax.device_put(t_vars, rep),
        sharding.to_global(jax.device_get(batch), mesh),
        3,
    )
    assert sharded._cache_size() == 1  # one compile across steps 0-2 (epochs 1 and 2)
    chex.assert_trees_all_close(got_metrics, want_metrics, atol=2e-5, rtol=2e-5)
    chex.assert_trees_all_close(got_state, want_state, atol=2e-5, rtol=2e-5)
    assert int(got_state.step) == 3
    assert set(want_metrics[0]) >= {"loss", "loss_ce", "top1", "lr", "grad_norm", "param_norm"}
    # The parameters and batch statistics actually moved.
    delta = jax.tree.map(jnp.subtract, got_state.params, init.params)
    assert float(optax.global_norm(delta)) > 1e-3
    assert not np.allclose(got_state.batch_stats["bn1"]["mean"], init.batch_stats["bn1"]["mean"])
    np.testing.assert_allclose([float(m["lr"]) for m in want_metrics], [0.1, 0.1, 0.01], rtol=1e-6)
    if not uses_teacher:  # the first step's metrics by hand: CE and top-1 of the student
        apply = jax.jit(functools.partial(TinyCNN().apply, train=True, mutable=["batch_stats"]))
        (logits, _), _ = apply(
            {"params": init.params, "batch_stats": init.batch_stats}, batch["image"]
        )
        labels = batch["label"]
        np.testing.assert_allclose(want_metrics[0]["loss"], jnp.mean(_ce(logits, labels)), 1e-6)
        np.testing.assert_allclose(
            want_metrics[0]["top1"], jnp.mean(jnp.argmax(logits, -1) == labels), 1e-6
        )


@pytest.mark.integration  # heavy: the second tier
def test_warmup_ramp_seen_through_the_step():
    """Same parameters at epoch 1 and 2 (warmup 2): loss(2) - loss(1) = 0.5 * loss_kd."""
    try:
        distiller = DISTILLERS["luminet"]()  # warmup_epochs=2
    except pytest.skip.Exception:  # the real distillers are not there: use the double
        distiller = DISTILLERS["luminet_double"]()
    train_state, t_vars, batch, tx, _ = _setup()
    step_fn = jax.jit(steps.make_train_step(TinyCNN(), TinyCNN(), distiller, tx, steps_per_epoch=1))
    _, m1 = step_fn(train_state, t_vars, batch)
    _, m2 = step_fn(train_state.replace(step=jnp.ones((), jnp.int32)), t_vars, batch)
    kd = float(m2["loss_kd"])
    assert kd > 1e-3
    np.testing.assert_allclose(float(m2["loss"]) - float(m1["loss"]), 0.5 * kd, rtol=1e-4)


@pytest.mark.integration  # heavy: the second tier
def test_float64_step_matches_hand_written_sgd():
    """With x64 on, the step computes in float64 and equals loss/grad/SGD done by hand."""
    with jax.enable_x64(True):
        train_state, t_vars, batch, _, _ = _setup(dtype=jnp.float64, seed=1)
        lr, wd = 0.1, 5e-4
        tx = optim.make_optimizer(learning_rate=lr, momentum=0.9, weight_decay=wd)
        train_state = state.create_train_state(
            {"params": train_state.params, "batch_stats": train_state.batch_stats}, tx
        )
        distiller = LumiNetDouble()
        step_fn = jax.jit(
            steps.make_train_step(TinyCNN(), TinyCNN(), distiller, tx, steps_per_epoch=1)
        )
        new_state, m = step_fn(train_state, t_vars, batch)
        assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(new_state.params))
        assert m["loss"].dtype == jnp.float64

        def ref_loss(params):
            t_logits, _ = TinyCNN().apply(t_vars, batch["image"], train=False)
            (s_logits, _), _ = TinyCNN().apply(
                {"params": params, "batch_stats": train_state.batch_stats},
                batch["image"],
                train=True,
                mutable=["batch_stats"],
            )
            return distiller(s_logits, t_logits, batch["label"], epoch=1).total

        loss, grads = jax.jit(jax.value_and_grad(ref_loss))(train_state.params)
        want = jax.tree.map(lambda p, g: p - lr * (g + wd * p), train_state.params, grads)
        np.testing.assert_allclose(m["loss"], loss, rtol=1e-12)
        chex.assert_trees_all_close(new_state.params, want, rtol=1e-12, atol=1e-14)

        mesh = sharding.make_mesh()
        rep = sharding.replicated(mesh)
        sharded = sharding.shard_train_step(
            steps.make_train_step(
                TinyCNN(axis_name="data"),
                TinyCNN(axis_name="data"),
                distiller,
                tx,
                steps_per_epoch=1,
                axis_name="data",
            ),
            mesh,
        )
        got_state, got_m = sharded(
            jax.device_put(train_state, rep),
            jax.device_put(t_vars, rep),
            sharding.to_global(jax.device_get(batch), mesh),
        )
        chex.assert_trees_all_close(got_state, new_state, rtol=1e-10, atol=1e-12)
        chex.assert_trees_all_close(got_m, m, rtol=1e-10, atol=1e-12)


def test_batch_not_divisible_by_devices_raises_clear_error():
    mesh = sharding.make_mesh()
    with pytest.raises(ValueError, match="global batch 30 is not divisible by 8 devices"):
        sharding.check_global_batch(30, mesh)
    sharding.check_global_batch(32, mesh)
    local = {"image": np.zeros((12, 8, 8, 3), np.float32), "label": np.zeros(12, np.int32)}
    with pytest.raises(ValueError, match="global batch 12 is not divisible by 8 devices"):
        sharding.to_global(local, mesh)
    got = sharding.to_global({k: v[:8] for k, v in local.items()}, mesh)
    assert got["image"].sharding.is_equivalent_to(sharding.batch_sharding(mesh), 4)
    assert got["image"].shape == (8, 8, 8, 3)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_create_train_state_keeps_dtypes_and_fills_missing_batch_stats(dtype):
    params = {"dense": {"kernel": jnp.ones((3, 2), dtype), "bias": jnp.zeros(2, dtype)}}
    train_state = state.create_train_state(
        {"params": params}, optim.make_optimizer(learning_rate=0.1, weight_decay=1e-4)
    )
    assert train_state.batch_stats == {} and train_state.extra_params == {}
    assert int(train_state.step) == 0 and train_state.step.dtype == jnp.int32
    assert all(x.dtype == dtype for x in jax.tree.leaves(train_state.params))
    assert all(x.dtype == dtype for x in jax.tree.leaves(train_state.opt_state[1][0].trace))
