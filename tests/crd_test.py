"""CRD: scores, Z, NCE loss, gradients and memory update against float64 NumPy; sampling;
8 devices equal 1; parameter counts for resnet32x4 -> resnet8x4."""

import functools
import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from luminet_jax import distillers, models
from luminet_jax.distillers import crd, crd_sampling

N, K, DIM, S_DIM, T_DIM, CLASSES, B = 40, 8, 8, 6, 10, 4, 8
TEMP, MOMENTUM, EPS = 0.07, 0.5, 1e-7


@pytest.fixture(autouse=True)
def _x64():
    """Float64 throughout (exact comparisons), and one jit cache for all tests."""
    with jax.enable_x64(True):
        yield


def _f64(tree):
    return jax.tree.map(
        lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def _batch(rng, all_labels, batch):
    index = jnp.asarray(rng.permutation(N)[:batch], jnp.int32)
    return dict(
        s_logits=jnp.asarray(rng.standard_normal((batch, CLASSES))),
        t_logits=jnp.asarray(rng.standard_normal((batch, CLASSES))),
        labels=jnp.asarray(all_labels[np.asarray(index)], jnp.int32),
        s_pooled=jnp.asarray(rng.standard_normal((batch, S_DIM))),
        t_pooled=jnp.asarray(rng.standard_normal((batch, T_DIM))),
        index=index,
        rng=jax.random.key(int(rng.integers(1 << 30))),
    )


def _setup(seed=0, batch=B, **hparams):
    """A distiller, float64 extra {"params", "state"} (labels set), one batch, the labels."""
    hparams = {"num_negatives": K, "feat_dim": DIM, "temperature": TEMP, **hparams}
    d = distillers.get_distiller("crd", **hparams)
    rng = np.random.default_rng(seed)
    all_labels = np.arange(N) % CLASSES
    rng.shuffle(all_labels)
    b = _batch(rng, all_labels, batch)
    extra = _init(jax.random.key(seed), b["s_pooled"], b["t_pooled"])
    extra["state"] = d.data_state(extra["state"], all_labels)
    return d, extra, b, all_labels


@jax.jit
def _init(rng, s_pooled, t_pooled):  # init does not depend on the sampling hyperparameters
    d = distillers.get_distiller("crd", feat_dim=DIM)
    return _f64(d.init(rng, {"pooled": s_pooled}, {"pooled": t_pooled}, num_train=N))


def _loss(params, state, b, *, d, axis_name=None):
    out = d(
        b["s_logits"], b["t_logits"], b["labels"], epoch=1, axis_name=axis_name,
        s_feats={"pooled": b["s_pooled"]}, t_feats={"pooled": b["t_pooled"]},
        index=b["index"], extra={"params": params, "state": state}, rng=b["rng"],
    )  # fmt: skip
    idx = None  # the contrast index the distiller drew (one device only)
    if axis_name is None:
        idx = crd.crd_contrast_index(
            b["rng"], b["index"], b["labels"], state["order"], state["sorted_labels"],
            num_negatives=d.num_negatives, mode=d.mode, replace=d.replace,
        )  # fmt: skip
    return out.total, (out.parts, out.state, idx)


_grad = jax.value_and_grad(_loss, has_aux=True)  # w.r.t. the embeddings' params
_step = jax.jit(_grad, static_argnames=("d", "axis_name"))


@jax.jit
def _indices(b, state):
    """The contrast index of `b` in each sampling variant the tests check, in one program."""
    return {
        (mode, k, replace): crd.crd_contrast_index(
            b["rng"],
            b["index"],
            b["labels"],
            state["order"],
            state["sorted_labels"],
            num_negatives=k,
            mode=mode,
            replace=replace,
        )  # fmt: skip
        for mode, k, replace in VARIANTS
    }


VARIANTS = (("exact", K, False), ("relax", K, False), ("exact", 35, False), ("exact", K, True))


@jax.jit
def _pure(params, state, b, idx, z_s, z_t):
    """The public pure functions on the batch (DESIGN.md section 6, imported from
    `luminet_jax.distillers` as users do): scores, NCE loss, one memory update."""
    v_s = crd.embed(params["embed_s"], b["s_pooled"])
    v_t = crd.embed(params["embed_t"], b["t_pooled"])
    out = distillers.crd_contrast(
        v_s, v_t, state["memory_s"], state["memory_t"], idx, temperature=TEMP, z_s=z_s, z_t=z_t
    )
    nce = distillers.crd_nce_loss(out[0], num_data=N) + distillers.crd_nce_loss(out[1], num_data=N)
    memory_s = distillers.crd_update_memory(state["memory_s"], v_s, b["index"], momentum=MOMENTUM)
    return out, 0.8 * nce, memory_s


# An independent float64 NumPy CRD (mdistiller's Embed, ContrastMemory, ContrastLoss).
def np_embed(p, x):
    y = x @ p["kernel"] + p["bias"]
    return y / np.linalg.norm(y, axis=1, keepdims=True), y


def np_embed_grad(p, x, g):
    """d/d(kernel, bias) of sum(g * l2norm(x W + b)), by hand."""
    v, y = np_embed(p, x)
    gy = (g - np.sum(g * v, axis=1, keepdims=True) * v) / np.linalg.norm(y, axis=1, keepdims=True)
    return {"kernel": x.T @ gy, "bias": gy.sum(0)}


def np_crd(params, state, b, idx, *, z_s=None, z_t=None):
    """(loss_kd, grads w.r.t. both embeddings' params, new memories, z_s, z_t, out_s, out_t)."""
    p = jax.tree.map(np.asarray, params)
    ms, mt = np.asarray(state["memory_s"]), np.asarray(state["memory_t"])
    xs, xt = np.asarray(b["s_pooled"]), np.asarray(b["t_pooled"])
    vs, vt = np_embed(p["embed_s"], xs)[0], np_embed(p["embed_t"], xt)[0]
    idx = np.asarray(idx)
    ws, wt = mt[idx], ms[idx]  # (B, K+1, D): the student is scored on the teacher's memory
    es = np.exp(np.einsum("bkd,bd->bk", ws, vs) / TEMP)
    et = np.exp(np.einsum("bkd,bd->bk", wt, vt) / TEMP)
    z_s = es.mean() * N if z_s is None else z_s
    z_t = et.mean() * N if z_t is None else z_t
    c = K / N
    loss, grads = 0.0, {}
    for name, e, z, w, x in (("embed_s", es, z_s, ws, xs), ("embed_t", et, z_t, wt, xt)):
        o = e / z
        bsz = o.shape[0]
        loss += -(np.log(o[:, 0] / (o[:, 0] + c + EPS)).sum()
                  + np.log(c / (o[:, 1:] + c + EPS)).sum()) / bsz  # fmt: skip
        g_o = np.empty_like(o)
        g_o[:, 0] = -(1.0 / o[:, 0] - 1.0 / (o[:, 0] + c + EPS)) / bsz
        g_o[:, 1:] = 1.0 / (o[:, 1:] + c + EPS) / bsz
        g_v = np.einsum("bk,bkd->bd", g_o * o / TEMP, w)
        grads[name] = jax.tree.map(lambda a: 0.8 * a, np_embed_grad(p[name], x, g_v))
    new = []
    for m, v in ((ms, vs), (mt, vt)):
        m = m.copy()
        rows = MOMENTUM * m[np.asarray(b["index"])] + (1 - MOMENTUM) * v
        m[np.asarray(b["index"])] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        new.append(m)
    return 0.8 * loss, grads, new, z_s, z_t, es / z_s, et / z_t


@pytest.mark.integration  # heavy: the second tier
def test_crd_step_equals_numpy_float64():
    d, extra, b, all_labels = _setup()
    (total, (parts, new_state, idx)), grads = _step(extra["params"], extra["state"], b, d=d)
    loss, want_grads, (ms, mt), z_s, z_t, out_s, out_t = np_crd(
        extra["params"], extra["state"], b, idx
    )
    ce = distillers.softmax_xent(b["s_logits"], b["labels"])
    np.testing.assert_allclose(parts["loss_kd"], loss, rtol=1e-6)
    np.testing.assert_allclose(total, loss + ce, rtol=1e-6)
    chex.assert_trees_all_close(grads, want_grads, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(new_state["memory_s"], ms, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(new_state["memory_t"], mt, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose([new_state["z_s"], new_state["z_t"]], [z_s, z_t], rtol=1e-6)
    # The public pure functions give the same scores, loss and memory.
    got, nce, memory_s = _pure(extra["params"], extra["state"], b, idx, z_s, z_t)
    chex.assert_trees_all_close(got, (out_s, out_t), rtol=1e-6)
    np.testing.assert_allclose(nce, loss, rtol=1e-6)
    np.testing.assert_allclose(memory_s, ms, rtol=1e-6, atol=1e-12)
    # Exact mode: the sample itself, then K distinct samples of the other classes.
    _check_index(np.asarray(idx), b, all_labels, "exact", K)


@pytest.mark.integration  # heavy: the second tier
def test_gather_and_matmul_scores_agree(monkeypatch):
    _, extra, b, _ = _setup()
    v = crd.embed(extra["params"]["embed_s"], b["s_pooled"])
    idx = jnp.asarray(np.random.default_rng(1).integers(0, N, (B, K + 1)), jnp.int32)
    mem = extra["state"]["memory_t"]
    score = lambda v: crd.crd_exp_scores(v, mem, idx, temperature=TEMP)  # noqa: E731
    fn = lambda v: jnp.sum(jnp.log(score(v)) ** 2)  # noqa: E731
    want = jax.jit(jax.value_and_grad(fn))(v)
    monkeypatch.setattr(crd, "MATMUL_MAX_ROWS_PER_COLUMN", 0)  # the gather path
    got = jax.jit(jax.value_and_grad(fn))(v)
    chex.assert_trees_all_close(got, want, rtol=1e-10)


def test_z_is_set_once():
    d, extra, b, all_labels = _setup()
    (_, (_, state1, _)), _ = _step(extra["params"], extra["state"], b, d=d)
    assert float(state1["z_s"]) > 0 and float(state1["z_t"]) > 0
    b2 = _batch(np.random.default_rng(5), all_labels, B)
    (_, (parts2, state2, idx2)), _ = _step(extra["params"], state1, b2, d=d)
    assert float(state2["z_s"]) == float(state1["z_s"])
    assert float(state2["z_t"]) == float(state1["z_t"])
    # The second step scores with the kept Z, on the memory after the first update.
    loss, *_ = np_crd(
        extra["params"], state1, b2, idx2, z_s=float(state1["z_s"]), z_t=float(state1["z_t"])
    )
    np.testing.assert_allclose(parts2["loss_kd"], loss, rtol=1e-6)


def _check_index(idx, b, all_labels, mode, num_negatives, replace=False):
    labels = np.asarray(b["labels"])
    assert idx.shape == (B, num_negatives + 1)
    if mode == "exact":
        np.testing.assert_array_equal(idx[:, 0], np.asarray(b["index"]))
    else:  # a sample of the same class
        np.testing.assert_array_equal(all_labels[idx[:, 0]], labels)
    assert np.all(all_labels[idx[:, 1:]] != labels[:, None])
    if num_negatives <= 30 and not replace:  # as np.random.choice(replace=False)
        assert all(len(set(row)) == num_negatives for row in idx[:, 1:])


# 35 > the 30 samples of the other classes: drawn with replacement, as the reference.
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.integration  # heavy: the second tier
def test_contrast_index_negatives_are_other_classes(variant):
    _, extra, b, all_labels = _setup()
    idx = np.asarray(_indices(b, extra["state"])[variant])
    mode, num_negatives, replace = variant
    _check_index(idx, b, all_labels, mode, num_negatives, replace)


def test_missing_labels_or_index_raise():
    d, extra, b, _ = _setup()
    state = {k: v for k, v in extra["state"].items() if k not in ("order", "sorted_labels")}
    with pytest.raises(ValueError, match="data_state"):
        _step(extra["params"], state, b, d=d)
    with pytest.raises(ValueError, match="index"):
        _step(extra["params"], extra["state"], dict(b, index=None), d=d)


@pytest.mark.integration  # heavy: the second tier
def test_eight_devices_equal_one():
    assert jax.device_count() >= 8
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    d, extra, b, _ = _setup()  # one row per device
    (loss, (parts, state, _)), grads = _step(extra["params"], extra["state"], b, d=d)
    specs = {k: (P() if k == "rng" else P("data")) for k in b}
    sharded = jax.jit(
        jax.shard_map(
            functools.partial(_grad, d=d, axis_name="data"),
            mesh=mesh,
            in_specs=(P(), P(), specs),
            out_specs=P(),
        )
    )
    (got_loss, (got_parts, got_state, _)), got_grads = sharded(extra["params"], extra["state"], b)
    chex.assert_trees_all_close(
        (got_loss, got_parts, got_state, got_grads),
        (loss, parts, state, grads),
        rtol=1e-10,
        atol=1e-13,
    )


def test_extra_parameters_resnet32x4_to_resnet8x4():
    def feats(name):
        model = models.get_model(name, num_classes=100)
        x = jnp.zeros((2, 32, 32, 3))
        variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
        return jax.eval_shape(lambda v: model.apply(v, x, train=False)[1], variables)

    d = distillers.get_distiller("crd")
    extra = jax.eval_shape(
        lambda: d.init(jax.random.key(0), feats("resnet8x4"), feats("resnet32x4"), num_train=50000)
    )
    assert sum(x.size for x in jax.tree.leaves(extra["params"])) == 65_792
    assert extra["state"]["memory_s"].shape == extra["state"]["memory_t"].shape == (50000, 128)
    assert 2 * extra["state"]["memory_s"].size == 12_800_000


@pytest.mark.integration  # heavy: the second tier
def test_crd_kd_adds_hinton_kd():
    d, extra, b, _ = _setup()
    dkd = distillers.get_distiller("crd_kd", num_negatives=K, feat_dim=DIM, temperature=TEMP)
    (total, (parts, _, _)), _ = _step(extra["params"], extra["state"], b, d=dkd)
    (_, (base_parts, _, _)), _ = _step(extra["params"], extra["state"], b, d=d)
    want_kd = distillers.kd_loss(b["s_logits"], b["t_logits"], temperature=4.0)
    np.testing.assert_allclose(parts["loss_logit_kd"], want_kd, rtol=1e-6)
    np.testing.assert_allclose(parts["loss_kd"], base_parts["loss_kd"], rtol=1e-6)
    np.testing.assert_allclose(total, sum(parts.values()), rtol=1e-6)


def test_k_smallest_is_an_exact_radix_select():
    rng = np.random.default_rng(3)
    n, k = 300, 77
    # Distinct keys that share high digits, so that every radix level decides.
    high = rng.integers(0, 4, (4, n)).astype(np.uint32) << 28
    keys = high | np.stack([rng.permutation(n) for _ in range(4)]).astype(np.uint32) << 4
    valid = rng.random((4, n)) < np.array([[1.0], [0.9], [0.5], [0.3]])
    valid[3, :] = np.arange(n) % 3 == 0  # exactly 100 valid
    select = jax.jit(jax.vmap(lambda x, v: crd_sampling._k_smallest(x, v, k)))
    got = np.asarray(select(jnp.asarray(keys), jnp.asarray(valid)))
    for row in range(4):
        pos = np.flatnonzero(valid[row])
        np.testing.assert_array_equal(got[row], np.sort(pos[np.argsort(keys[row, pos])[:k]]))


def test_hash_stream_values_are_distinct():
    seeds = jnp.asarray([12345, 678], jnp.uint32)
    h = np.asarray(crd_sampling._hash_stream(seeds, 1 << 16))
    assert len(np.unique(h)) == 1 << 16
    assert 0.45 < np.mean(h >> 31) < 0.55  # the top bit is balanced


@pytest.mark.integration  # heavy: the second tier
def test_negatives_are_uniform_over_the_other_classes():
    """Over 4,000 rows of one sample, each of the 30 other-class samples and each pair of
    them is drawn equally often (chi-square within 5 sigma; fixed keys, so exact)."""
    _, extra, b, all_labels = _setup()
    sample = int(b["index"][0])
    rows = dict(
        b,
        index=jnp.full(B, sample, jnp.int32),
        labels=jnp.full(B, all_labels[sample], jnp.int32),
    )
    draws = [  # 500 calls of the already compiled sampler, B = 8 rows each
        _indices(dict(rows, rng=jax.random.key(i)), extra["state"])[VARIANTS[0]][:, 1:]
        for i in range(500)
    ]
    onehot = np.zeros((500 * B, N))
    np.put_along_axis(onehot, np.concatenate(jax.device_get(draws)), 1.0, axis=1)
    pool = np.flatnonzero(all_labels != all_labels[sample])
    counts = onehot.sum(0)[pool]
    expected = 500 * B * K / len(pool)
    df = len(pool) - 1
    assert ((counts - expected) ** 2 / expected).sum() < df + 5 * np.sqrt(2 * df)
    pairs = (onehot.T @ onehot)[np.ix_(pool, pool)][np.triu_indices(len(pool), 1)]
    expected = 500 * B * K * (K - 1) / (len(pool) * (len(pool) - 1))
    df = len(pairs) - 1
    assert ((pairs - expected) ** 2 / expected).sum() < df + 5 * np.sqrt(2 * df)


@pytest.mark.parametrize("pair", ["cifar100_res32x4_res8x4", "cifar100_res56_res20"])
def test_pair_configs_build_crd_and_crd_kd(pair):
    module = importlib.import_module(f"configs.{pair}")
    for method, kd_weight in (("crd", 0.0), ("crd_kd", 1.0)):
        d = distillers.get_distiller(**module.get_config(f"method={method}").distiller)
        assert (d.ce_weight, d.feat_weight, d.kd_weight) == (1.0, 0.8, kd_weight)
        assert (d.feat_dim, d.num_negatives, d.temperature, d.momentum) == (128, 16384, 0.07, 0.5)
        assert d.mode == "exact" and not d.replace
