"""Distillers per shard (shard_map, pmap over 8 fake CPU devices) and under jit."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from luminet_jax import distillers

NUM_DEVICES = 8
DATA = P("data")
HPARAMS = {  # Non-default values; warmups short enough to see the ramp in epochs 1..5.
    "vanilla": dict(ce_weight=0.7),
    "kd": dict(ce_weight=0.3, kd_weight=0.8, temperature=2.0),
    "dkd": dict(alpha=1.5, beta=6.0, temperature=2.0, warmup_epochs=4),
    "luminet": dict(ce_weight=2.0, alpha=5.0, temperature=3.0, warmup_epochs=4),
    "kd_ls": dict(ce_weight=0.1, kd_weight=9.0, temperature=2.0),
    "dkd_ls": dict(alpha=1.0, beta=2.0, temperature=2.0, warmup_epochs=3),
}


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() >= NUM_DEVICES, "tests/conftest.py should force 8 CPU devices"
    return Mesh(np.array(jax.devices()[:NUM_DEVICES]), ("data",))


def inputs(batch=16, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    s = jnp.asarray(2.0 * rng.standard_normal((batch, classes)), jnp.float32)
    t = jnp.asarray(2.0 * rng.standard_normal((batch, classes)), jnp.float32)
    y = jnp.asarray(rng.integers(0, classes, batch), jnp.int32)
    return s, t, y


def luminet_outputs(s, t, *, axis_name=None, stats_groups=1):
    """(KL_lumi, its gradient w.r.t. s, the student's perceived logits)."""
    kw = dict(axis_name=axis_name, stats_groups=stats_groups)
    kl, grad = jax.value_and_grad(lambda s: distillers.luminet_kl(s, t, temperature=4.0, **kw))(s)
    return kl, grad, distillers.perception(s, **kw)


def test_luminet_global_statistics_under_shard_map(mesh):
    s, t, _ = inputs()
    want = jax.jit(luminet_outputs)(s, t)
    sharded = jax.jit(
        jax.shard_map(
            functools.partial(luminet_outputs, axis_name="data"),
            mesh=mesh,
            in_specs=(DATA, DATA),
            out_specs=(P(), DATA, DATA),
        )
    )
    chex.assert_trees_all_close(sharded(s, t), want, rtol=1e-5, atol=1e-7)


def test_luminet_global_statistics_under_pmap():
    s, t, _ = inputs()
    want_kl, want_grad, want_h = jax.jit(luminet_outputs)(s, t)
    per_device = lambda x: x.reshape(NUM_DEVICES, -1, x.shape[-1])  # noqa: E731
    kl, grad, h = jax.pmap(
        functools.partial(luminet_outputs, axis_name="data"),
        axis_name="data",
        devices=jax.devices()[:NUM_DEVICES],
    )(per_device(s), per_device(t))
    chex.assert_trees_all_close(kl, jnp.full(NUM_DEVICES, want_kl), rtol=1e-5)
    chex.assert_trees_all_close(h.reshape(want_h.shape), want_h, rtol=1e-5, atol=1e-7)
    # pmap differentiates the replicated loss once per device (psum transposes to psum), so
    # its gradient is NUM_DEVICES times d(global loss)/d(local logits); shard_map's is not.
    chex.assert_trees_all_close(
        grad.reshape(want_grad.shape) / NUM_DEVICES, want_grad, rtol=1e-5, atol=1e-7
    )


def test_stats_groups_8_equals_per_shard_statistics(mesh):
    s, t, _ = inputs()
    want_kl, _, want_h = jax.jit(functools.partial(luminet_outputs, stats_groups=8))(s, t)

    def per_shard(s, t):  # No axis_name: statistics and the batch mean of this shard only.
        kl, _, h = luminet_outputs(s, t)
        return kl[None], h

    kl, h = jax.jit(
        jax.shard_map(per_shard, mesh=mesh, in_specs=(DATA, DATA), out_specs=(DATA, DATA))
    )(s, t)
    chex.assert_trees_all_close(h, want_h, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(jnp.mean(kl), want_kl, rtol=1e-5)


@pytest.mark.parametrize("stats_groups", [2, 16])
def test_stats_groups_count_groups_of_the_global_batch(mesh, stats_groups):
    """With axis_name, G groups of the global batch: within shards (16) or across them (2)."""
    s, t, _ = inputs(batch=32)
    want = jax.jit(functools.partial(luminet_outputs, stats_groups=stats_groups))(s, t)
    sharded = jax.jit(
        jax.shard_map(
            functools.partial(luminet_outputs, axis_name="data", stats_groups=stats_groups),
            mesh=mesh,
            in_specs=(DATA, DATA),
            out_specs=(P(), DATA, DATA),
        )
    )
    chex.assert_trees_all_close(sharded(s, t), want, rtol=1e-5, atol=1e-7)


def test_stats_groups_that_split_shards_raise(mesh):
    s, t, _ = inputs(batch=24)
    fn = jax.shard_map(
        functools.partial(luminet_outputs, axis_name="data", stats_groups=3),
        mesh=mesh,
        in_specs=(DATA, DATA),
        out_specs=(P(), DATA, DATA),
    )
    with pytest.raises(ValueError, match="stats_groups=3 splits shards"):
        jax.jit(fn)(s, t)


def all_distillers(s, t, y, epoch, *, axis_name=None):
    """{name: (total, parts, d total / d s)} for every registered distiller."""
    out = {}
    for name, hparams in HPARAMS.items():
        distiller = distillers.get_distiller(name, **hparams)

        def loss(s, distiller=distiller):
            result = distiller(s, t, y, epoch=epoch, axis_name=axis_name)
            return result.total, result.parts

        (total, parts), grad = jax.value_and_grad(loss, has_aux=True)(s)
        out[name] = (total, parts, grad)
    return out


@pytest.mark.integration  # heavy: the second tier
def test_distiller_totals_under_shard_map_equal_one_device(mesh):
    s, t, y = inputs()
    epoch = jnp.asarray(2, jnp.int32)
    want = jax.jit(all_distillers)(s, t, y, epoch)
    scalars = (P(), P(), DATA)
    sharded = jax.jit(
        jax.shard_map(
            functools.partial(all_distillers, axis_name="data"),
            mesh=mesh,
            in_specs=(DATA, DATA, DATA, P()),
            out_specs={name: scalars for name in HPARAMS},
        )
    )
    chex.assert_trees_all_close(sharded(s, t, y, epoch), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(HPARAMS))
def test_one_trace_across_epochs_and_warmup_ramp(name):
    s, t, y = inputs()
    distiller = distillers.get_distiller(name, **HPARAMS[name])
    chex.clear_trace_counter()  # `step` below is the same code object for every parameter.

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(s, t, epoch):
        def loss(s, t):
            result = distiller(s, t, y, epoch=epoch)
            return result.total, result.parts

        return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(s, t)

    kd_terms = []
    for epoch in range(1, 6):
        (total, parts), (s_grad, t_grad) = step(s, t, jnp.asarray(epoch, jnp.int32))
        kd_terms.append(float(parts["loss_kd"]))
        np.testing.assert_allclose(total, parts["loss_ce"] + parts["loss_kd"], rtol=1e-6)
        np.testing.assert_array_equal(t_grad, 0.0)  # The teacher is detached.
        assert np.all(np.isfinite(s_grad)) and np.any(s_grad != 0.0)
    warmup = HPARAMS[name].get("warmup_epochs")
    if name == "vanilla":
        assert kd_terms == [0.0] * 5
    elif warmup is None:  # KD and KD-LS have no ramp.
        np.testing.assert_allclose(kd_terms, kd_terms[-1], rtol=1e-6)
    else:
        ramp = [min(e / warmup, 1.0) for e in range(1, 6)]
        np.testing.assert_allclose(kd_terms, np.multiply(ramp, kd_terms[-1]), rtol=1e-6)
