"""Masked rows (padded RoIs in detection): the logit distillers with `mask` equal the same
distillers on the valid rows alone, on one device and over 8 shards with uneven counts."""

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
# Detection's settings (ce_weight 0, DESIGN.md section 7) and classification's defaults.
HPARAMS = {
    "kd": dict(ce_weight=0.0, temperature=4.0),
    "kd_ce": dict(name="kd"),
    "dkd": dict(ce_weight=0.0, alpha=1.0, beta=0.25, temperature=1.0, warmup_epochs=1),
    "dkd_ce": dict(name="dkd", warmup_epochs=4),
    "luminet": dict(ce_weight=0.0, alpha=2.0, temperature=0.7),
    "luminet_ce": dict(name="luminet", warmup_epochs=4),
    "vanilla": dict(),
}


def _distiller(key):
    hparams = dict(HPARAMS[key])
    return distillers.get_distiller(hparams.pop("name", key), **hparams)


def _inputs(n=32, classes=6, seed=0):
    """Logits with garbage (large, but finite) in the padded rows, and an uneven mask."""
    rng = np.random.default_rng(seed)
    s = rng.normal(0, 2.0, (n, classes))
    t = rng.normal(0, 2.0, (n, classes))
    labels = rng.integers(0, classes, n)
    mask = rng.random(n) < 0.6
    mask[:4] = False  # a whole shard (of 8) without a valid row
    mask[4:8] = True  # and a full one
    s[~mask] = rng.normal(0, 50.0, (int((~mask).sum()), classes))
    t[~mask] = 80.0
    return s, t, labels.astype(np.int32), mask


def _loss(distiller, s, t, labels, mask=None, axis_name=None):
    out = distiller(s, t, labels, epoch=2, axis_name=axis_name, mask=mask)
    return out.total, out.parts


@pytest.mark.parametrize("key", sorted(HPARAMS))
@pytest.mark.integration  # heavy: the second tier
def test_masked_loss_and_gradient_equal_the_valid_rows_alone(key):
    distiller = _distiller(key)
    with jax.enable_x64(True):
        s, t, labels, mask = map(jnp.asarray, _inputs())
        grad = jax.value_and_grad(functools.partial(_loss, distiller), has_aux=True)
        (total, parts), g = grad(s, t, labels, mask)
        (want_total, want_parts), want_g = grad(s[mask], t[mask], labels[mask])
        chex.assert_trees_all_close((total, parts), (want_total, want_parts), rtol=1e-12)
        chex.assert_trees_all_close(g[mask], want_g, rtol=1e-10, atol=1e-14)
        assert not np.any(np.asarray(g[~mask]))  # padded rows get no gradient at all
        assert float(total) > 0 or key == "vanilla" and float(total) >= 0


@pytest.mark.integration  # heavy: the second tier
def test_all_valid_mask_equals_no_mask():
    s, t, labels, _ = _inputs()
    for key in ("kd_ce", "dkd_ce", "luminet_ce"):
        distiller = _distiller(key)
        chex.assert_trees_all_close(
            _loss(distiller, s, t, labels, np.ones(len(s), bool)),
            _loss(distiller, s, t, labels),
            rtol=1e-6,
        )


@pytest.mark.integration  # heavy: the second tier
def test_no_valid_row_gives_zero_not_nan():
    s, t, labels, _ = _inputs()
    for key in ("kd", "dkd", "luminet"):
        total, parts = _loss(_distiller(key), s, t, labels, np.zeros(len(s), bool))
        assert float(total) == 0.0 and all(float(v) == 0.0 for v in parts.values()), key


@pytest.mark.parametrize("key", ["kd", "dkd", "luminet"])
@pytest.mark.integration  # heavy: the second tier
def test_eight_shards_with_uneven_valid_counts_equal_one_device(key):
    distiller = _distiller(key)
    mesh = Mesh(np.array(jax.devices()[:NUM_DEVICES]), ("data",))
    data = P("data")

    def value_and_grad(s, t, labels, mask, axis_name=None):
        fn = lambda s: _loss(distiller, s, t, labels, mask, axis_name)  # noqa: E731
        return jax.value_and_grad(fn, has_aux=True)(s)

    with jax.enable_x64(True):
        args = tuple(map(jnp.asarray, _inputs(seed=1)))
        want = jax.jit(value_and_grad)(*args)
        sharded = jax.jit(
            jax.shard_map(
                functools.partial(value_and_grad, axis_name="data"),
                mesh=mesh,
                in_specs=(data,) * 4,
                out_specs=((P(), P()), data),
            )
        )
        chex.assert_trees_all_close(sharded(*args), want, rtol=1e-10, atol=1e-14)


def test_bad_masks_name_the_problem():
    s, t, labels, mask = _inputs()
    with pytest.raises(ValueError, match="mask must have shape"):
        _loss(_distiller("kd"), s, t, labels, mask[:-1])
    with pytest.raises(ValueError, match="stats_groups=1"):
        distillers.perception(s, stats_groups=2, mask=mask)
