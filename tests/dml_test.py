"""DML: each student's CE + mean KL(peer || self) against float64 NumPy, with gradients."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from luminet_jax.distillers import dml


def np_log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_dml(logits, labels, temperature):
    """(ce, kl, d total / d logits[i]) by hand: peers are constants in each student's KL."""
    n, (b, c) = len(logits), logits[0].shape
    onehot = np.eye(c)[labels]
    ce, kl, grads = [], [], []
    for i, z in enumerate(logits):
        logp = np_log_softmax(z)
        ce.append(-(onehot * logp).sum() / b)
        logq = np_log_softmax(z / temperature)
        peers = [np_log_softmax(logits[j] / temperature) for j in range(n) if j != i]
        kl.append(temperature**2 * np.mean([(np.exp(p) * (p - logq)).sum() / b for p in peers]))
        # d CE = (softmax(z) - y) / B; d T^2 KL(p || softmax(z / T)) = T (softmax(z / T) - p) / B.
        g_kl = np.mean([temperature * (np.exp(logq) - np.exp(p)) / b for p in peers], axis=0)
        grads.append((np.exp(logp) - onehot) / b + g_kl)
    return np.array(ce), np.array(kl), grads


@pytest.mark.parametrize("num_students, temperature", [(2, 1.0), (3, 2.0)])
@pytest.mark.integration  # heavy: the second tier
def test_dml_equals_numpy_float64(num_students, temperature):
    rng = np.random.default_rng(num_students)
    logits = [2.0 * rng.standard_normal((6, 5)) for _ in range(num_students)]
    labels = rng.integers(0, 5, 6)
    want_ce, want_kl, want_grads = np_dml(logits, labels, temperature)
    with jax.enable_x64(True):
        ce, kl = dml.dml_student_losses(
            [jnp.asarray(z) for z in logits], jnp.asarray(labels), temperature=temperature
        )
        out, grads = jax.value_and_grad(
            lambda zs: dml.dml_loss(zs, jnp.asarray(labels), temperature=temperature).total
        )([jnp.asarray(z) for z in logits])
    np.testing.assert_allclose(ce, want_ce, rtol=1e-10)
    np.testing.assert_allclose(kl, want_kl, rtol=1e-10)
    np.testing.assert_allclose(out, want_ce.sum() + want_kl.sum(), rtol=1e-10)
    chex.assert_trees_all_close(grads, want_grads, rtol=1e-9, atol=1e-14)


def test_identical_students_have_zero_kl_and_one_student_raises():
    z = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)), jnp.float32)
    out = dml.dml_loss([z, z], jnp.array([0, 1, 2, 0]))
    np.testing.assert_allclose(out.parts["loss_kd"], 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="two students"):
        dml.dml_loss([z], jnp.array([0, 1, 2, 0]))


def test_global_batch_under_shard_map():
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    rng = np.random.default_rng(1)
    zs = [jnp.asarray(rng.standard_normal((16, 5)), jnp.float32) for _ in range(2)]
    labels = jnp.asarray(rng.integers(0, 5, 16), jnp.int32)
    want = dml.dml_student_losses(zs, labels)
    fn = functools.partial(dml.dml_student_losses, axis_name="data")
    got = jax.jit(
        jax.shard_map(fn, mesh=mesh, in_specs=([P("data")] * 2, P("data")), out_specs=P())
    )(zs, labels)
    chex.assert_trees_all_close(got, want, rtol=1e-5)
