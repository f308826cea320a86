"""NHWC map helpers of the feature losses: dtype, l2 normalization, PyTorch's adaptive pooling.

Also the stage pairing and the gather-then-pmean pattern of the batch-relational losses.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

HIGHEST = lax.Precision.HIGHEST  # torch's float32 matmuls are full precision (no TF32)


def cast(*xs: jax.Array) -> tuple[jax.Array, ...]:
    """The arrays in their promoted dtype, at least float32 (float64 stays float64)."""
    dtype = jnp.promote_types(jnp.result_type(*xs), jnp.float32)
    return tuple(jnp.asarray(x, dtype) for x in xs)


def l2_normalize(x: jax.Array, axis: int, eps: float = 1e-12) -> jax.Array:
    """torch's `F.normalize`: x / max(||x||, eps), with a finite gradient at x = 0."""
    # sqrt(max(|x|^2, eps^2)) = max(|x|, eps) and never differentiates sqrt at 0.
    norm = jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))
    return x / norm


def _pool_weights(size_in: int, size_out: int) -> np.ndarray:
    """(out, in) weights of PyTorch's adaptive average pooling along one axis."""
    w = np.zeros((size_out, size_in))
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -((-(i + 1) * size_in) // size_out)  # ceil((i + 1) * in / out)
        w[i, start:end] = 1.0 / (end - start)
    return w


def adaptive_avg_pool(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """(B, H, W, C) -> (B, h, w, C), PyTorch's `adaptive_avg_pool2d` (also for h > H)."""
    (b, in_h, in_w, c), (h, w) = x.shape, size
    if (in_h, in_w) == (h, w):
        return x
    if in_h % h == 0 and in_w % w == 0:  # Equal windows: a plain average pool.
        return jnp.mean(x.reshape(b, h, in_h // h, w, in_w // w, c), axis=(2, 4))
    ph = jnp.asarray(_pool_weights(in_h, h), x.dtype)
    pw = jnp.asarray(_pool_weights(in_w, w), x.dtype)
    return jnp.einsum("hH,bHWc,wW->bhwc", ph, x, pw, precision=HIGHEST)


def pool_to_smaller(f_s: jax.Array, f_t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Pools the larger of two NHWC maps to the other's spatial size (mdistiller's rule).

    mdistiller compares heights and pools to a square (t_H, t_H); for the square maps of
    every model that is this. Non-square maps pool to (min H, min W) here.
    """
    check_map(f_s, "student")
    check_map(f_t, "teacher")
    # Reference: (t_H, t_H) there; the same for square maps, and no shape error otherwise.
    size = (min(f_s.shape[1], f_t.shape[1]), min(f_s.shape[2], f_t.shape[2]))
    return adaptive_avg_pool(f_s, size), adaptive_avg_pool(f_t, size)


def check_map(x: jax.Array, role: str) -> None:
    if jnp.ndim(x) != 4:
        raise ValueError(f"The {role} feature map must be NHWC (rank 4); got {jnp.shape(x)}.")


def stage_pairs(s_feats: Sequence[jax.Array], t_feats: Sequence[jax.Array], owner: str):
    """(student, teacher) map pairs, as mdistiller's `zip` (the shorter list decides)."""
    if not isinstance(s_feats, (list, tuple)) or not isinstance(t_feats, (list, tuple)):
        raise TypeError(f"{owner} takes lists of maps (one per stage), even for one stage.")
    if not s_feats or not t_feats:
        raise ValueError(f"{owner} needs at least one student and one teacher map.")
    return list(zip(s_feats, t_feats))


def gather(x: jax.Array, axis_name: str | None) -> jax.Array:
    return x if axis_name is None else lax.all_gather(x, axis_name, axis=0, tiled=True)


def global_loss(loss: jax.Array, axis_name: str | None) -> jax.Array:
    # Each shard computed the same global loss from gathered inputs. The pmean makes it
    # invariant over the axis, and its transpose divides the cotangent by the number of
    # shards, so the all-gather's psum-scatter yields exactly the global gradient.
    return loss if axis_name is None else lax.pmean(loss, axis_name)


def flat(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def power(x: jax.Array, p: float) -> jax.Array:
    return x ** int(p) if float(p).is_integer() else jnp.power(x, p)
