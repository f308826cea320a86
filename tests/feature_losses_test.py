"""Pure feature losses: values and gradients against an independent float64 NumPy reference.

The NumPy functions below are written from the formulas (DESIGN.md section 6 and the
definitions in mdistiller's method files), with loops where that is clearer, never from the
library. Gradients of the reference are central finite differences in float64 (step 1e-6,
about 1e-8 relative error on these small inputs); values must agree to 1e-6 relative.
Teacher inputs are checked against finite differences where the reference function lets
gradient flow into them and against zero where it detaches them.
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from scipy.stats import norm

from luminet_jax import distillers

EPS = 1e-12  # F.normalize's eps

# ---------------------------------------------------------------- NumPy reference (float64)


def np_pool(x, size):
    """Adaptive average pooling (NHWC): output bin i averages rows floor(iH/h)..ceil((i+1)H/h)."""
    (b, hh, ww, c), (h, w) = x.shape, size
    out = np.zeros((b, h, w, c))
    for i in range(h):
        r0, r1 = math.floor(i * hh / h), math.ceil((i + 1) * hh / h)
        for j in range(w):
            c0, c1 = math.floor(j * ww / w), math.ceil((j + 1) * ww / w)
            out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


def np_match(s, t):
    if s.shape[1] > t.shape[1]:
        s = np_pool(s, t.shape[1:3])
    elif s.shape[1] < t.shape[1]:
        t = np_pool(t, s.shape[1:3])
    return s, t


def np_unit(x, axis):
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), EPS)


def np_at(s_list, t_list, p=2.0):
    def attention(f):
        return np_unit((f**p).mean(-1).reshape(f.shape[0], -1), 1)

    total = 0.0
    for s, t in zip(s_list, t_list, strict=True):
        s, t = np_match(s, t)
        total += ((attention(s) - attention(t)) ** 2).mean()
    return total


def np_huber(x, y):
    a = np.abs(x - y)
    return np.where(a < 1.0, 0.5 * a**2, a - 0.5).mean()


def np_rkd(s, t, distance_weight=25.0, angle_weight=50.0, squared=False, eps=1e-12):
    s, t = s.reshape(len(s), -1), t.reshape(len(t), -1)
    n = len(s)

    def distances(e):
        d = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                if i != j:
                    d2 = max(np.sum((e[i] - e[j]) ** 2), eps)
                    d[i, j] = d2 if squared else np.sqrt(d2)
        return d / d[~np.eye(n, dtype=bool)].mean()

    def angles(e):
        a = np.zeros((n, n, n))
        for i in range(n):
            for j in range(n):
                u = e[j] - e[i]
                u = u / max(np.linalg.norm(u), eps)
                for k in range(n):
                    v = e[k] - e[i]
                    a[i, j, k] = u @ (v / max(np.linalg.norm(v), eps))
        return a

    return distance_weight * np_huber(distances(s), distances(t)) + angle_weight * np_huber(
        angles(s), angles(t)
    )


def np_pkt(s, t, eps=1e-7):
    def probs(x):
        x = x.reshape(len(x), -1)
        x = x / (np.linalg.norm(x, axis=1, keepdims=True) + eps)
        sim = (x @ x.T + 1.0) / 2.0
        return sim / sim.sum(1, keepdims=True)

    ps, pt = probs(s), probs(t)
    return np.mean(pt * np.log((pt + eps) / (ps + eps)))


def np_sp(s_list, t_list):
    total = 0.0
    for s, t in zip(s_list, t_list, strict=True):
        b = len(s)
        gs = np_unit(s.reshape(b, -1) @ s.reshape(b, -1).T, 1)
        gt = np_unit(t.reshape(b, -1) @ t.reshape(b, -1).T, 1)
        total += np.sum((gt - gs) ** 2) / b**2
    return total


def np_nst(s_list, t_list, t_detached):
    def maps(f):  # (B, C, HW), each channel's map a unit vector
        return np_unit(f.transpose(0, 3, 1, 2).reshape(f.shape[0], f.shape[3], -1), 2)

    def kernel_mean(a, b):
        return np.mean(np.einsum("bcp,bdp->bcd", a, b) ** 2)

    total = 0.0
    for s, t, td in zip(s_list, t_list, t_detached, strict=True):
        s, t = np_match(s, t)
        _, td = np_match(s, td)
        s, t, td = maps(s), maps(t), maps(td)
        total += kernel_mean(td, td) + kernel_mean(s, s) - 2.0 * kernel_mean(s, t)
    return total


def np_vid(pred, t, log_scale, eps=1e-5):
    t = np_pool(t, pred.shape[1:3])
    var = np.log(1.0 + np.exp(log_scale)) + eps
    return np.mean(0.5 * ((pred - t) ** 2 / var + np.log(var)))


def np_margin(gamma, beta):
    out = []
    for g, m in zip(gamma, beta, strict=True):
        s = abs(g)
        if norm.cdf(-m / s) > 0.001:
            out.append(m - s * np.exp(-((m / s) ** 2) / 2) / np.sqrt(2 * np.pi) / norm.cdf(-m / s))
        else:
            out.append(-3 * s)
    return np.array(out)


def np_ofd(s, t, margin):
    t = np_pool(t, s.shape[1:3])
    m = margin[None, None, None, :]
    loss = np.where((s > m) & (t <= m), (s - m) ** 2, 0.0)
    loss += np.where((s > t) & (t > m) & (t <= 0), (s - t) ** 2, 0.0)
    loss += np.where(t > 0, (s - t) ** 2, 0.0)
    return loss.mean(0).sum()


def np_hcl(s_list, t_list):
    total = 0.0
    for s, t in zip(s_list, t_list, strict=True):
        h = s.shape[1]
        sizes = [size for size in (4, 2, 1) if size < h]
        weights = [0.5 ** (i + 1) for i in range(len(sizes))]
        loss = np.mean((s - t) ** 2)
        for size, w in zip(sizes, weights, strict=True):
            loss += w * np.mean((np_pool(s, (size, size)) - np_pool(t, (size, size))) ** 2)
        total += loss / (1.0 + sum(weights))
    return total


def np_kdsvd(s_list, t_list, k=1, t_detached=None):
    def top(f, n):  # the NCHW map as (B, C*H, W) matrices
        b, h, w, c = f.shape
        _, sv, vh = np.linalg.svd(f.transpose(0, 3, 1, 2).reshape(b, c * h, w), full_matrices=False)
        v = np.swapaxes(vh, 1, 2)[:, :, :n]
        return np_unit(sv[:, :n], 1), np_unit(v, 1)

    total, prev, b = 0.0, None, len(s_list[0])
    t_detached = t_list if t_detached is None else t_detached
    for s, t, td in zip(s_list, t_list, t_detached, strict=True):
        s, t = np_match(s, t)
        _, td = np_match(s, td)
        sv_t, v_t = top(t, k)
        sv_td, v_td = top(td, k)
        _, v_s = top(s, k + 3)
        aligned = np.zeros_like(v_t)
        for i in range(b):
            for j in range(k):
                if v_t[i, np.argmax(np.abs(v_t[i, :, j])), j] < 0:  # largest entry positive
                    v_t[i, :, j] *= -1
                if v_td[i, np.argmax(np.abs(v_td[i, :, j])), j] < 0:
                    v_td[i, :, j] *= -1
                cos = v_s[i].T @ v_t[i, :, j]
                best = np.argmax(np.abs(cos))
                aligned[i, :, j] = np.sign(cos[best]) * v_s[i, :, best]
        # The teacher's kernel is detached; its singular values also scale the student's.
        v_t, v_s = v_td * sv_td[:, None, :], aligned * sv_t[:, None, :]
        if prev is not None:
            rbf = lambda a, c: np.exp(-((a[:, :, None, :] - c[:, None, :, :]) ** 2) / 8)
            total += np.sum((rbf(v_s, prev[0]) - rbf(v_t, prev[1])) ** 2)
        prev = (v_s, v_t)
    return total / b


# ------------------------------------------------------------------------------- the cases


def randn(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for shape in shapes]


def stages(fn, n_s):
    """A loss of (s_list, t_list) as a function of the flat array list [s..., t...]."""
    return lambda a, **kw: fn(list(a[:n_s]), list(a[n_s:]), **kw)


L = distillers  # the library under test
# name: (library fn of the flat arrays, NumPy fn of them, arrays, gradient kind of each array)
# kinds: "fd" = compare with finite differences, "zero" = exactly 0, "~0" = 0 up to rounding.
CASES = {
    "at_student_pooled_channels_differ": (
        stages(L.at_loss, 2),
        stages(np_at, 2),
        randn(0, (2, 8, 8, 3), (2, 4, 4, 4), (2, 4, 4, 5), (2, 4, 4, 4)),
        ["fd"] * 4,
    ),
    "at_teacher_pooled_p3": (
        lambda a: L.at_loss([a[0]], [a[1]], p=3.0),
        lambda a: np_at([a[0]], [a[1]], p=3.0),
        randn(1, (3, 4, 4, 2), (3, 8, 8, 3)),
        ["fd"] * 2,
    ),
    "rkd_b3": (
        lambda a: L.rkd_loss(*a),
        lambda a: np_rkd(*a),
        randn(2, (3, 5), (3, 3)),
        ["fd", "zero"],
    ),
    "rkd_squared_maps": (
        lambda a: L.rkd_loss(*a, squared=True, distance_weight=2.0, angle_weight=3.0),
        lambda a: np_rkd(*a, distance_weight=2.0, angle_weight=3.0, squared=True),
        randn(4, (4, 1, 2, 3), (4, 2, 1, 1)),
        ["fd", "zero"],
    ),
    "pkt_b2": (
        lambda a: L.pkt_loss(*a),
        lambda a: np_pkt(*a),
        randn(5, (2, 5), (2, 3)),
        ["fd"] * 2,
    ),
    "pkt_b6": (
        lambda a: L.pkt_loss(*a),
        lambda a: np_pkt(*a),
        randn(6, (6, 4), (6, 7)),
        ["fd"] * 2,
    ),
    "sp_shapes_differ_b2": (
        stages(L.sp_loss, 1),
        stages(np_sp, 1),
        randn(7, (2, 4, 4, 3), (2, 2, 2, 5)),
        ["fd"] * 2,
    ),
    "sp_two_stages": (
        stages(L.sp_loss, 2),
        stages(np_sp, 2),
        randn(8, (4, 4, 4, 2), (4, 2, 2, 3), (4, 4, 4, 3), (4, 2, 2, 2)),
        ["fd"] * 4,
    ),
    "vid_teacher_pooled": (
        lambda a: L.vid_loss(*a),
        lambda a: np_vid(*a),
        randn(11, (2, 4, 4, 3), (2, 8, 8, 3), (3,)),
        ["fd"] * 3,
    ),
    "vid_same_size": (
        lambda a: L.vid_loss(*a, eps=1e-3),
        lambda a: np_vid(*a, eps=1e-3),
        randn(12, (3, 4, 4, 5), (3, 4, 4, 5), (5,)),
        ["fd"] * 3,
    ),
    "hcl_heights_1_2_4_8": (
        stages(L.hcl_loss, 4),
        stages(np_hcl, 4),
        randn(13, *[(2, h, h, c) for h, c in ((1, 3), (2, 3), (4, 2), (8, 2))] * 2),
        ["fd"] * 8,
    ),
}


def _nst_case(seed, s_shapes, t_shapes):
    arrays = randn(seed, *s_shapes, *t_shapes)
    n = len(s_shapes)
    frozen = [a.copy() for a in arrays[n:]]  # the detached teacher-teacher term
    return (
        stages(L.nst_loss, n),
        lambda a: np_nst(list(a[:n]), list(a[n:]), frozen),
        arrays,
        ["fd"] * len(arrays),
    )


CASES["nst_student_pooled_channels_differ"] = _nst_case(9, [(2, 8, 8, 3)], [(2, 4, 4, 5)])
CASES["nst_teacher_pooled"] = _nst_case(
    10, [(3, 4, 4, 4), (3, 2, 2, 2)], [(3, 4, 4, 2), (3, 4, 4, 3)]
)


def _kdsvd_case(seed, s_shapes, t_shapes, k, teacher_kind):
    arrays = randn(seed, *s_shapes, *t_shapes)
    n = len(s_shapes)
    frozen = [a.copy() for a in arrays[n:]]
    return (
        lambda a: L.kdsvd_loss(a[:n], a[n:], k=k),
        lambda a: np_kdsvd(list(a[:n]), list(a[n:]), k, frozen),
        arrays,
        ["fd"] * n + [teacher_kind] * n,
    )


# k = 1: the teacher's normalized top singular value is 1, so its gradient is 0 (to rounding).
CASES["kdsvd_student_pooled"] = _kdsvd_case(
    14,
    [(2, 8, 8, 2), (2, 4, 4, 3), (2, 6, 6, 2)],
    [(2, 4, 4, 3), (2, 4, 4, 2), (2, 6, 6, 3)],
    1,
    "~0",
)
CASES["kdsvd_k2"] = _kdsvd_case(
    15, [(3, 6, 6, 2), (3, 6, 6, 3)], [(3, 6, 6, 3), (3, 6, 6, 2)], 2, "fd"
)
CASES["kdsvd_wide_matrices"] = _kdsvd_case(  # C*H < W: V is not square (extra SVD term)
    16, [(2, 1, 6, 2), (2, 1, 6, 3)], [(2, 1, 6, 2), (2, 1, 6, 2)], 1, "~0"
)


def _ofd_case(seed, s_shape, t_shape):
    s, t, gamma, beta = randn(seed, s_shape, t_shape, s_shape[-1:], s_shape[-1:])
    margin = np_margin(gamma, 0.5 * beta)
    return (
        lambda a: L.ofd_loss(a[0], a[1], jnp.asarray(margin, a[0].dtype)),
        lambda a: np_ofd(a[0], a[1], margin),
        [s, t],
        ["fd", "zero"],
    )


CASES["ofd_teacher_pooled"] = _ofd_case(17, (2, 4, 4, 3), (2, 8, 8, 3))
CASES["ofd_teacher_enlarged"] = _ofd_case(18, (3, 4, 4, 2), (3, 2, 2, 2))  # as the reference


def fd_grad(fn, arrays, index, step=1e-6):
    grad = np.zeros_like(arrays[index])
    for pos in np.ndindex(grad.shape):
        values = []
        for sign in (1.0, -1.0):
            moved = [a.copy() for a in arrays]
            moved[index][pos] += sign * step
            values.append(fn(moved))
        grad[pos] = (values[0] - values[1]) / (2 * step)
    return grad


def rel_err(got, want):
    return float(np.max(np.abs(np.asarray(got) - want)) / max(np.max(np.abs(want)), 1e-30))


SLOW = {"kdsvd_wide_matrices"}  # C*H < W never occurs in the models' maps
FD_CASES = [pytest.param(k, marks=[pytest.mark.slow] if k in SLOW else []) for k in sorted(CASES)]


@pytest.mark.parametrize("case", FD_CASES)
@pytest.mark.integration  # heavy: the second tier
def test_value_and_gradient_equal_numpy_float64(case):
    fn, np_fn, arrays, kinds = CASES[case]
    want = np_fn(arrays)
    with jax.enable_x64(True):
        value, grads = jax.jit(jax.value_and_grad(fn))([jnp.asarray(a) for a in arrays])
        chex.assert_type([value, *grads], jnp.float64)
    assert rel_err(value, want) < 1e-6, (case, float(value), want)
    for i, kind in enumerate(kinds):
        if kind == "zero":
            np.testing.assert_array_equal(grads[i], 0.0, err_msg=f"{case}: input {i}")
            continue
        if kind == "~0":
            assert np.max(np.abs(grads[i])) < 1e-12, (case, i)
            continue
        want_grad = fd_grad(np_fn, arrays, i)
        assert np.max(np.abs(want_grad)) > 0, (case, i)
        assert rel_err(grads[i], want_grad) < 1e-6, (case, i, rel_err(grads[i], want_grad))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.integration  # heavy: the second tier
def test_float32_inputs_give_float32(case):
    fn, _, arrays, _ = CASES[case]
    out = jax.eval_shape(jax.value_and_grad(fn), [jnp.asarray(a, jnp.float32) for a in arrays])
    chex.assert_type(jax.tree.leaves(out), jnp.float32)


def test_bfloat16_inputs_compute_in_float32():
    def all_losses(s, t, c):
        e_s, e_t = s[:, 0, 0], t[:, 0, 0]
        return [
            L.at_loss([s], [t]),
            L.sp_loss([s], [t]),
            L.nst_loss([s], [t]),
            L.hcl_loss([s], [t]),
            L.kdsvd_loss([s, s], [t, t]),
            L.vid_loss(s, t, c),
            L.ofd_loss(s, t, c),
            L.ofd_margin(c, c),
            L.rkd_loss(e_s, e_t),
            L.pkt_loss(e_s, e_t),
        ]

    x = jax.ShapeDtypeStruct((2, 4, 4, 3), jnp.bfloat16)
    outs = jax.eval_shape(all_losses, x, x, jax.ShapeDtypeStruct((3,), jnp.bfloat16))
    chex.assert_type(outs, jnp.float32)


# ------------------------------------------------------------------- global batch (8 devices)


def relational_losses(s, t, *, axis_name=None):
    """Each batch-relational loss and its gradient w.r.t. the student's embeddings."""
    kw = dict(axis_name=axis_name)
    fns = {
        "rkd": lambda s, t: L.rkd_loss(s, t, **kw),
        "pkt": lambda s, t: L.pkt_loss(s, t, **kw),
        "sp": lambda s, t: L.sp_loss(
            [s.reshape(len(s), 2, 2, -1)], [t.reshape(len(t), 1, 3, -1)], **kw
        ),
    }
    return {k: jax.value_and_grad(f)(s, t) for k, f in fns.items()}


@pytest.mark.integration  # heavy: the second tier
def test_relational_losses_on_8_devices_equal_the_global_batch():
    assert jax.device_count() >= 8, "tests/conftest.py should force 8 CPU devices"
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    s0, t0 = randn(21, (16, 8), (16, 6))
    with jax.enable_x64(True):
        s, t = jnp.asarray(s0), jnp.asarray(t0)
        want = jax.jit(relational_losses)(s, t)
        got = jax.jit(
            jax.shard_map(
                functools.partial(relational_losses, axis_name="data"),
                mesh=mesh,
                in_specs=(P("data"), P("data")),
                out_specs={k: (P(), P("data")) for k in ("rkd", "pkt", "sp")},
            )
        )(s, t)
        got, want = jax.device_get((got, want))
    for k in want:
        value, grad = got[k]
        assert rel_err(value, want[k][0]) < 1e-12, k
        assert rel_err(grad, want[k][1]) < 1e-12, k  # each shard's part of the global gradient
    assert rel_err(np_rkd(s0, t0), want["rkd"][0]) < 1e-6


# ------------------------------------------------------------------- special points and edges


@pytest.mark.integration  # heavy: the second tier
def test_rkd_finite_gradient_at_zero_distances():
    """The diagonal (and duplicate rows) have zero distance: sqrt and normalize at 0."""

    def values_and_grads(s, t):
        out = {sq: jax.value_and_grad(L.rkd_loss)(s, t, squared=sq) for sq in (False, True)}
        return out, jax.value_and_grad(L.rkd_loss)(s[:2], t[:2])

    s, t = randn(22, (4, 3), (4, 5))
    s[2] = s[0]  # a duplicate pair: zero off-diagonal distance and angle vector
    with jax.enable_x64(True):
        out = jax.jit(values_and_grads)(jnp.asarray(s), jnp.asarray(t))
        out, (value2, grad2) = jax.device_get(out)
        with pytest.raises(ValueError, match=">= 2"):
            L.rkd_loss(jnp.asarray(s[:1]), jnp.asarray(t[:1]))
    for squared, (value, grad) in out.items():
        assert np.all(np.isfinite(grad)) and np.any(grad != 0)
        assert rel_err(value, np_rkd(s, t, squared=squared)) < 1e-6
    # Two samples: every normalized distance is 1 and every angle 0 or 1, so RKD is 0.
    assert abs(float(value2)) < 1e-20 and np.max(np.abs(grad2)) < 1e-12


@pytest.mark.integration  # heavy: the second tier
def test_finite_gradients_at_zero_and_degenerate_maps():
    """All-zero maps/embeddings (zero norms) and equal singular values still differentiate."""
    ortho = jnp.zeros((3, 4, 4, 2)).at[:, 0, :, 0].set(1.0)  # (C*H, W) with equal singular values
    losses = {
        "at": lambda s, t: L.at_loss([s], [t]),
        "nst": lambda s, t: L.nst_loss([s], [t]),
        "sp": lambda s, t: L.sp_loss([s], [t]),
        "pkt": L.pkt_loss,
        "rkd": L.rkd_loss,
        "hcl": lambda s, t: L.hcl_loss([s], [t]),
        "kdsvd": lambda s, t: L.kdsvd_loss([ortho + s, s], [t, t]),  # equal and zero values
    }
    t = jnp.asarray(randn(23, (3, 4, 4, 2))[0])
    grads = jax.jit(lambda s, t: {k: jax.grad(f)(s, t) for k, f in losses.items()})(0 * t, t)
    for k, g in grads.items():
        assert np.all(np.isfinite(g)), k


def test_kdsvd_does_not_depend_on_svd_signs():
    """Negating a map negates its singular vectors only; the loss must not change."""
    s = [jnp.asarray(a) for a in randn(24, (2, 6, 6, 2), (2, 6, 6, 3))]
    t = [jnp.asarray(a) for a in randn(25, (2, 6, 6, 3), (2, 6, 6, 2))]
    fn = jax.jit(L.kdsvd_loss)
    want = fn(s, t)
    for s2, t2 in (([-s[0], s[1]], t), (s, [t[0], -t[1]]), ([s[0], -s[1]], [-t[0], t[1]])):
        np.testing.assert_allclose(fn(s2, t2), want, rtol=1e-5)


def test_ofd_margin_both_branches():
    """E[x | x < 0] where Phi(-beta/|gamma|) > 0.001 (beta/|gamma| < 3.09), else -3|gamma|."""
    gamma = np.array([1.0, -0.5, 2.0, 0.3, -1.5, 1.0, 0.1])
    beta = np.array([0.0, 0.4, -1.0, 0.9, 4.5, 3.0, 0.35])
    want = np_margin(gamma, beta)
    ratio = beta / np.abs(gamma)
    assert np.any(norm.cdf(-ratio) > 0.001) and np.any(norm.cdf(-ratio) <= 0.001)
    np.testing.assert_array_equal(want[ratio > 3.5], -3 * np.abs(gamma[ratio > 3.5]))
    with jax.enable_x64(True):  # The last three channels are point masses (gamma = 0).
        got = jax.jit(L.ofd_margin)(
            jnp.asarray([*gamma, 0, 0, 0]), jnp.asarray([*beta, -0.7, 0, 0.7])
        )
        assert rel_err(got[:7], want) < 1e-6
        np.testing.assert_array_equal(got[7:], [-0.7, 0.0, 0.0])
    x = jax.ShapeDtypeStruct((2,), jnp.float32)
    chex.assert_type(jax.eval_shape(L.ofd_margin, x, x), jnp.float32)


@pytest.mark.parametrize(
    "height, weights", [(1, []), (2, [1 / 2]), (4, [1 / 2, 1 / 4]), (8, [1 / 2, 1 / 4, 1 / 8])]
)
def test_hcl_levels_used_by_height(height, weights):
    """A checkerboard difference has mse 1 and pools to 0, so HCL = 1 / (1 + sum of weights)."""
    board = (-1.0) ** np.add.outer(np.arange(height), np.arange(height))
    s = (
        np.broadcast_to(board[None, :, :, None], (2, height, height, 3))
        if height > 1
        else np.ones((2, 1, 1, 3))
    )
    t = np.zeros_like(s)
    with jax.enable_x64(True):
        got = L.hcl_loss([jnp.asarray(s)], [jnp.asarray(t)])
    np.testing.assert_allclose(got, 1.0 / (1.0 + sum(weights)), rtol=1e-12)
    np.testing.assert_allclose(np_hcl([s], [t]), 1.0 / (1.0 + sum(weights)), rtol=1e-12)


def test_adaptive_pool_equals_torch():
    torch = pytest.importorskip("torch")
    x = randn(26, (2, 6, 7, 3))[0]
    with jax.enable_x64(True):
        for size in ((4, 3), (3, 7), (8, 9), (1, 1), (2, 7)):
            want = (
                torch.nn.functional.adaptive_avg_pool2d(
                    torch.from_numpy(x.transpose(0, 3, 1, 2)), size
                )
                .numpy()
                .transpose(0, 2, 3, 1)
            )
            np.testing.assert_allclose(L.adaptive_avg_pool(jnp.asarray(x), size), want, rtol=1e-12)
            np.testing.assert_allclose(np_pool(x, size), want, rtol=1e-12)


def test_bad_inputs_raise():
    s, t = (jnp.asarray(a) for a in randn(27, (2, 4, 4, 3), (2, 2, 2, 3)))
    with pytest.raises(TypeError, match="lists"):
        L.at_loss(s, t)
    with pytest.raises(ValueError, match="rank 4"):
        L.nst_loss([s[0]], [t])
    with pytest.raises(ValueError, match="before the regressor"):
        L.vid_loss(s, t, jnp.zeros(3))
    with pytest.raises(ValueError, match="do not match"):
        L.vid_loss(t, s, jnp.zeros(2))
    with pytest.raises(ValueError, match="level shapes"):
        L.hcl_loss([s], [t])
    with pytest.raises(ValueError, match="channels"):
        L.ofd_loss(s, t[..., :2], jnp.zeros(3))
