"""Optimizer = PyTorch SGD (coupled decay, momentum, nesterov); schedule = step decay."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from luminet_jax import optim


def _torch_sgd(params, grads_seq, *, lr_seq, momentum, weight_decay, nesterov):
    """torch.optim.SGD's update rule (dampening 0), written out in NumPy float64."""
    params = {k: v.copy() for k, v in params.items()}
    buf = None
    for grads, lr in zip(grads_seq, lr_seq):
        d = {k: grads[k] + weight_decay * params[k] for k in params}
        if momentum:
            buf = d if buf is None else {k: momentum * buf[k] + d[k] for k in params}
            d = {k: d[k] + momentum * buf[k] for k in params} if nesterov else buf
        params = {k: params[k] - lr * d[k] for k in params}
    return params


@pytest.mark.parametrize(
    "momentum,weight_decay,nesterov", [(0.9, 5e-4, False), (0.9, 1e-2, True), (0.0, 1e-3, False)]
)
def test_optimizer_matches_pytorch_sgd_recurrence(momentum, weight_decay, nesterov):
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=(4,))}
    grads_seq = [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(5)]
    schedule = optim.make_schedule(base_lr=0.2, steps_per_epoch=2, decay_epochs=(2,))
    lr_seq = [0.2, 0.2, 0.02, 0.02, 0.02]
    want = _torch_sgd(
        params,
        grads_seq,
        lr_seq=lr_seq,
        momentum=momentum,
        weight_decay=weight_decay,
        nesterov=nesterov,
    )
    with jax.enable_x64(True):
        tx = optim.make_optimizer(
            learning_rate=schedule, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
        )
        p = jax.tree.map(jnp.asarray, params)
        opt_state = tx.init(p)
        update = jax.jit(tx.update)
        for grads in grads_seq:
            updates, opt_state = update(jax.tree.map(jnp.asarray, grads), opt_state, p)
            p = optax.apply_updates(p, updates)
        assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(p))
        for k in params:
            np.testing.assert_allclose(np.asarray(p[k]), want[k], rtol=1e-13, atol=1e-15)
    # The recurrence is not trivially satisfied: decay and momentum both changed the result.
    plain = _torch_sgd(
        params, grads_seq, lr_seq=lr_seq, momentum=0.0, weight_decay=0.0, nesterov=False
    )
    assert not np.allclose(plain["w"], want["w"])


def test_schedule_decays_at_the_start_of_listed_epochs():
    schedule = optim.make_schedule(
        base_lr=0.05, steps_per_epoch=10, decay_epochs=(151, 181, 211), decay_rate=0.1
    )
    cases = {
        0: 0.05,
        1499: 0.05,
        1500: 0.005,
        1799: 0.005,
        1800: 5e-4,
        2099: 5e-4,
        2100: 5e-5,
        2399: 5e-5,
    }
    for step, lr in cases.items():
        np.testing.assert_allclose(float(schedule(step)), lr, rtol=1e-6, err_msg=str(step))
    jitted = jax.jit(schedule)
    np.testing.assert_allclose(float(jitted(jnp.int32(1500))), 0.005, rtol=1e-6)
    assert float(optim.make_schedule(base_lr=0.1, steps_per_epoch=5)(10_000)) == pytest.approx(0.1)
    # Epoch 1 in the list decays from the very first step.
    assert float(optim.make_schedule(base_lr=1.0, steps_per_epoch=5, decay_epochs=(1,))(0)) == (
        pytest.approx(0.1)
    )


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="1-based"):
        optim.make_schedule(base_lr=0.1, steps_per_epoch=5, decay_epochs=(0,))
    with pytest.raises(ValueError, match="positive"):
        optim.make_schedule(base_lr=0.1, steps_per_epoch=0)
