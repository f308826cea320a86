"""KD-SVD (self-supervised KD with singular value decomposition), as mdistiller's `KDSVD.py`.

Each stage's map is viewed as mdistiller views its NCHW tensor, (B, C*H, W) matrices, and
its top right-singular vectors (teacher k, student k + 3) are compared across consecutive
stages through RBF kernels. The right-singular vectors and singular values come from the
eigendecomposition of the small (W, W) Gram matrix X^T X (`eigh`), which lowers for every
backend, TPU included under `shard_map` (JAX's TPU SVD does not: its loop carries a
non-varying flag into a data-varying body). The decomposition has a custom derivative that
is finite for repeated singular values (where the analytic one is undefined, and torch's and
JAX's own rules give inf/NaN) and equals the standard SVD derivative elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from luminet_jax.distillers import feature_maps as fl

_mm = lambda spec, *xs: jnp.einsum(spec, *xs, precision=fl.HIGHEST)


def _safe_inverse(x: jax.Array) -> jax.Array:
    """1 / x where x > 0, else 0 (also where a square root of 0 would divide)."""
    return jnp.where(x > 0, 1.0 / jnp.where(x > 0, x, 1.0), 0.0)


def _gram_eigh(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B, m, n) -> s (B, r) descending, V (B, n, r), r = min(m, n), from eigh(X^T X)."""
    # Reference: torch.svd of X; eigh of the Gram matrix gives the same right-singular
    # vectors and s = sqrt(eigenvalues) (the signs are free in both: see _canonical_sign).
    # In float32 the Gram squares the condition number, so singular values below ~1e-3 of
    # the largest lose their digits; the loss uses only the top k + 3, normalized.
    # TPU's eigh is exact Jacobi for n <= 256 (W of every model's map here); larger n
    # takes a QDWH path that fails under shard_map like its SVD.
    lam, v = jnp.linalg.eigh(_mm("bmi,bmj->bij", x, x), symmetrize_input=True)
    r = min(x.shape[-2], x.shape[-1])
    lam, v = lam[:, ::-1][:, :r], v[:, :, ::-1][:, :, :r]  # descending, thin
    return jnp.sqrt(jnp.maximum(lam, 0.0)), v


@jax.custom_jvp
def _singular_values_and_right_vectors(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B, m, n) -> s (B, r), V (B, n, r) of the thin SVD, r = min(m, n), s descending."""
    return _gram_eigh(x)


@_singular_values_and_right_vectors.defjvp
def _svd_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    s, v = _gram_eigh(x)
    # With U = X V S^-1: U^T dX V = S^-1 A, A = V^T X^T dX V (no division needed below).
    xv = _mm("bmn,bni->bmi", x, v)  # X V = U S, (B, m, r)
    a = _mm("bmi,bmn,bnj->bij", xv, dx, v)
    ds = jnp.diagonal(a, axis1=-2, axis2=-1) * _safe_inverse(s)
    # dV = V (F o (S dP + dP^T S)) = V (F o (A + A^T)), F_ij = 1 / (s_j^2 - s_i^2); F = 0
    # where s_i = s_j (the standard rule has inf there, and NaN gradients even when those
    # vectors are unused).
    gap = s[:, None, :] ** 2 - s[:, :, None] ** 2
    f = jnp.where(gap == 0, 0.0, 1.0 / jnp.where(gap == 0, 1.0, gap))
    dv = _mm("bni,bij->bnj", v, f * (a + jnp.swapaxes(a, -1, -2)))
    if x.shape[-1] > x.shape[-2]:  # Wide: V is not square; add (I - V V^T) dX^T U S^-1.
        dxu = _mm("bmn,bmi->bni", dx, xv) * _safe_inverse(s * s)[:, None, :]  # dX^T U S^-1
        dv = dv + dxu - _mm("bnj,bmj,bmi->bni", v, v, dxu)
    return (s, v), (ds, dv)


def _finite(x: jax.Array) -> jax.Array:
    return jnp.where(jnp.isfinite(x), x, 0.0)


def _top_singular(f: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Normalized top-n singular values (B, n) and right-singular vectors (B, W, n)."""
    b, h, w, c = f.shape
    # Reference: mdistiller views its NCHW map as (B, C*H, W), so the matrix columns are
    # the map's W positions (the original TensorFlow code used (B, H*W, C)); this keeps
    # mdistiller's matrices. It also casts to float32; here the dtype is kept.
    x = jnp.transpose(f, (0, 3, 1, 2)).reshape(b, c * h, w)
    s, v = _singular_values_and_right_vectors(x)
    s = fl.l2_normalize(_finite(s)[:, :n], axis=1)
    v = fl.l2_normalize(_finite(v)[:, :, :n], axis=1)
    return s, v


def _canonical_sign(v: jax.Array) -> jax.Array:
    """Flips each column so that its entry of largest magnitude is positive."""
    # Reference: torch.svd's signs are whatever the backend returns, and the loss depends
    # on them (stages are compared after alignment to the teacher); fixing the teacher's
    # sign makes it one well-defined choice, the same on every backend.
    peak = jnp.take_along_axis(v, jnp.argmax(jnp.abs(v), axis=1)[:, None, :], axis=1)
    return v * jnp.where(peak < 0, -1.0, 1.0)


def _align(v_s: jax.Array, v_t: jax.Array) -> jax.Array:
    """mdistiller's `align_rsv`: per teacher vector, the signed best-matching student vectors."""
    cosine = _mm("bwi,bwj->bij", v_s, v_t)
    best = jnp.max(jnp.abs(cosine), axis=1, keepdims=True)
    mask = lax.stop_gradient(jnp.where(best == jnp.abs(cosine), jnp.sign(cosine), 0.0))
    return _mm("bwi,bij->bwj", v_s, mask)


def _rbf(v: jax.Array, v_prev: jax.Array) -> jax.Array:
    return jnp.exp(-((v[:, :, None, :] - v_prev[:, None, :, :]) ** 2) / 8.0)


def kdsvd_loss(
    s_feats: Sequence[jax.Array], t_feats: Sequence[jax.Array], *, k: int = 1
) -> jax.Array:
    """KD-SVD: squared RBF-kernel differences of consecutive stages' singular vectors.

    Per stage, the teacher's top-k right-singular vectors V_t and the student's top k + 3
    V_s (aligned to V_t by sign and best |cosine|) are scaled by the teacher's normalized
    singular values; for each stage after the first, sum((rbf(V_s, V_s_prev) -
    rbf(V_t, V_t_prev))^2) / B, rbf(a, b) = exp(-(a_i - b_j)^2 / 8), summed over stages.

    Args:
      s_feats, t_feats: lists of NHWC maps (mdistiller: stages 1..N). Channels may differ;
        a larger map is pooled to the other's size first (the reference needs equal sizes).
      k: the number of teacher singular vectors.

    As the reference, the teacher's kernels are detached, so the teacher's gradient flows
    only through its normalized singular values scaling V_s (zero for k = 1). Gradients are
    exact where the singular values are distinct; see the module docstring otherwise.
    """
    total, prev = 0.0, None
    pairs = fl.stage_pairs(s_feats, t_feats, "kdsvd_loss")
    for f_s, f_t in pairs:
        # Reference: mdistiller fails on maps of different sizes; the larger is pooled here.
        f_s, f_t = fl.pool_to_smaller(*fl.cast(f_s, f_t))
        s_t, v_t = _top_singular(f_t, k)
        v_t = _canonical_sign(v_t)
        _, v_s = _top_singular(f_s, k + 3)
        v_s = _align(v_s, v_t)
        v_t, v_s = v_t * s_t[:, None, :], v_s * s_t[:, None, :]
        if prev is not None:
            diff = (_rbf(v_s, prev[0]) - lax.stop_gradient(_rbf(v_t, prev[1]))) ** 2
            total = total + jnp.sum(_finite(diff))
        prev = (v_s, v_t)
    return jnp.asarray(total / pairs[0][0].shape[0], v_s.dtype)
