"""The distiller contract's learnable parts (DESIGN.md section 6) through the train step.

A toy feature distiller owns a learnable connector (`extra_params`) and non-learnable state
(`extra_state`): the step differentiates and updates the connector with the student (one
optimizer, weight decay included), passes both models' features (the teacher's without
gradient), carries the distiller's new state, and 8 shards equal one device.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax
from steps_test import NUM_CLASSES, SPE, TinyCNN, _run, _setup

from luminet_jax import distillers, sharding, state, steps
from luminet_jax.distillers import base


def _pmean(x, axis_name):
    return x if axis_name is None else lax.pmean(x, axis_name)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToyConnector(base.Distiller):
    """CE + weight * mse(pooled_s @ W, pooled_t); state: EMA of the teacher's pooled mean."""

    uses_feats = True
    weight: float = 2.0

    def init(self, rng, s_feats, t_feats, *, teacher_variables=None, num_train=None, teacher=None):
        assert teacher_variables is not None or teacher is None
        cs, ct = s_feats["pooled"].shape[-1], t_feats["pooled"].shape[-1]
        w = 0.3 * jax.random.normal(rng, (cs, ct), s_feats["pooled"].dtype)
        ema = jnp.zeros((ct,), t_feats["pooled"].dtype)
        return {"params": {"w": w}, "state": {"ema": ema, "calls": jnp.zeros((), jnp.int32)}}

    def loss(self, x):
        s_logits, labels, axis_name = x.s_logits, x.labels, x.axis_name
        s_feats, t_feats, extra = x.s_feats, x.t_feats, x.extra
        assert x.rng is not None
        pred = s_feats["pooled"] @ extra["params"]["w"]
        mse = _pmean(jnp.mean((pred - t_feats["pooled"]) ** 2), axis_name)
        ce = _pmean(
            jnp.mean(optax.softmax_cross_entropy_with_integer_labels(s_logits, labels)), axis_name
        )
        t_mean = _pmean(jnp.mean(t_feats["pooled"], axis=0), axis_name)
        new_state = {
            "ema": 0.9 * extra["state"]["ema"] + 0.1 * t_mean,
            "calls": extra["state"]["calls"] + 1,
        }
        kd = self.weight * mse
        return base.LossOutput(ce + kd, {"loss_ce": ce, "loss_kd": kd}, new_state)


def _state_with_extra(train_state, t_vars, tx, images):
    distiller = ToyConnector()
    _, s_feats = TinyCNN().apply(
        {"params": train_state.params, "batch_stats": train_state.batch_stats}, images, train=False
    )
    _, t_feats = TinyCNN().apply(t_vars, images, train=False)
    extra = distiller.init(
        jax.random.key(3), s_feats, t_feats, teacher_variables=t_vars, teacher=TinyCNN()
    )
    variables = {"params": train_state.params, "batch_stats": train_state.batch_stats}
    return distiller, state.create_train_state(variables, tx, extra)


@pytest.mark.integration  # heavy: the second tier
def test_extra_params_train_with_the_student_and_state_is_carried():
    train_state, t_vars, batch, tx, lr_fn = _setup()
    distiller, s0 = _state_with_extra(train_state, t_vars, tx, batch["image"])
    # One optimizer over (params, extra_params): its state mirrors both.
    assert jax.tree.structure(s0.opt_state) == jax.tree.structure(
        tx.init((s0.params, s0.extra_params))
    )
    step = jax.jit(
        steps.make_train_step(TinyCNN(), TinyCNN(), distiller, tx, steps_per_epoch=SPE, lr_fn=lr_fn)
    )
    s1, metrics = _run(step, s0, t_vars, batch, 3)
    assert int(s1.extra_state["calls"]) == 3
    assert float(jnp.abs(s1.extra_state["ema"]).sum()) > 0
    assert not np.allclose(s1.extra_params["w"], s0.extra_params["w"])
    np.testing.assert_allclose(
        metrics[0]["loss"], metrics[0]["loss_ce"] + metrics[0]["loss_kd"], rtol=1e-6
    )

    # The connector's update is exactly SGD with coupled weight decay on d(loss)/dW.
    def loss_wrt_w(w):
        variables = {"params": s0.params, "batch_stats": s0.batch_stats}
        (s_logits, s_feats), _ = TinyCNN().apply(
            variables, batch["image"], train=True, mutable=["batch_stats"]
        )
        _, t_feats = TinyCNN().apply(t_vars, batch["image"], train=False)
        extra = {"params": {"w": w}, "state": s0.extra_state}
        return distiller(
            s_logits,
            None,
            batch["label"],
            epoch=1,
            s_feats=s_feats,
            t_feats=t_feats,
            extra=extra,
            rng=jax.random.key(0),
        ).total

    grad_w = jax.grad(loss_wrt_w)(s0.extra_params["w"])
    one, _ = _run(step, s0, t_vars, batch, 1)
    want = s0.extra_params["w"] - lr_fn(0) * (grad_w + 5e-4 * s0.extra_params["w"])
    np.testing.assert_allclose(one.extra_params["w"], want, rtol=1e-5, atol=1e-7)


@pytest.mark.integration  # heavy: the second tier
def test_teacher_features_carry_no_gradient():
    train_state, t_vars, batch, tx, lr_fn = _setup()
    distiller, s0 = _state_with_extra(train_state, t_vars, tx, batch["image"])
    seen = {}

    @dataclasses.dataclass(frozen=True)
    class Probe(ToyConnector):
        def loss(self, x):
            seen["t_feats"] = x.t_feats
            return super().loss(x)

    step = steps.make_train_step(TinyCNN(), TinyCNN(), Probe(), tx, steps_per_epoch=SPE)
    jax.make_jaxpr(step)(s0, t_vars, batch)

    # The teacher's features reach the distiller through stop_gradient: differentiating
    # the step's loss w.r.t. the teacher's variables gives zeros.
    def total_wrt_teacher(tv):
        _, metrics = step(s0, tv, batch)
        return metrics["loss"]

    grads = jax.grad(total_wrt_teacher)(t_vars)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("teacher_train", [False, True])
@pytest.mark.integration  # heavy: the second tier
def test_teacher_batch_norm_mode_follows_teacher_train(teacher_train):
    train_state, t_vars, batch, tx, _ = _setup()
    _, s0 = _state_with_extra(train_state, t_vars, tx, batch["image"])
    seen = {}

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Probe(ToyConnector):
        def loss(self, x):
            seen["t_feats"] = x.t_feats
            return super().loss(x)

    distiller = Probe()
    object.__setattr__(distiller, "teacher_train", teacher_train)
    step = steps.make_train_step(TinyCNN(), TinyCNN(), distiller, tx, steps_per_epoch=SPE)
    step(s0, t_vars, batch)
    if teacher_train:  # batch statistics, running statistics untouched
        (_, want), _ = TinyCNN().apply(t_vars, batch["image"], train=True, mutable=["batch_stats"])
    else:
        _, want = TinyCNN().apply(t_vars, batch["image"], train=False)
    chex.assert_trees_all_close(seen["t_feats"], want, rtol=1e-6)


@pytest.mark.integration  # heavy: the second tier
def test_sharded_step_with_extra_equals_single_device():
    train_state, t_vars, batch, tx, lr_fn = _setup()
    distiller, s0 = _state_with_extra(train_state, t_vars, tx, batch["image"])
    single = jax.jit(
        steps.make_train_step(TinyCNN(), TinyCNN(), distiller, tx, steps_per_epoch=SPE, lr_fn=lr_fn)
    )
    want_state, want_metrics = _run(single, s0, t_vars, batch, 3)
    mesh = sharding.make_mesh()
    raw = steps.make_train_step(
        TinyCNN(axis_name="data"),
        TinyCNN(axis_name="data"),
        distiller,
        tx,
        steps_per_epoch=SPE,
        axis_name="data",
        lr_fn=lr_fn,
    )
    sharded = sharding.shard_train_step(raw, mesh)
    rep = sharding.replicated(mesh)
    got_state, got_metrics = _run(
        sharded,
        jax.device_put(s0, rep),
        jax.device_put(t_vars, rep),
        sharding.to_global(jax.device_get(batch), mesh),
        3,
    )
    chex.assert_trees_all_close(got_metrics, want_metrics, atol=2e-5, rtol=2e-5)
    chex.assert_trees_all_close(got_state, want_state, atol=2e-5, rtol=2e-5)
    assert int(got_state.extra_state["calls"]) == 3


def test_logit_distillers_have_no_extra():
    for name in ("kd", "dkd", "luminet", "vanilla", "kd_ls", "dkd_ls"):
        d = distillers.get_distiller(name)
        assert d.uses_feats is False and d.teacher_train is False
        assert d.init(jax.random.key(0), {}, {}) == {}


@pytest.mark.parametrize("num_classes", [NUM_CLASSES])
def test_create_train_state_without_extra_keeps_the_plain_optimizer(num_classes):
    del num_classes
    train_state, _, _, tx, _ = _setup()
    assert train_state.extra_params == {} and train_state.extra_state == {}
    assert jax.tree.structure(train_state.opt_state) == jax.tree.structure(
        tx.init(train_state.params)
    )
