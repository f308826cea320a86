"""Pieces shared by the distillers: dtype policy, input checks, batch means, CE, KL, top-k."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax


def to_float(x: jax.Array) -> jax.Array:
    """Casts to a float dtype of at least 32 bits (bf16/f16 -> f32; f64 stays f64)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def check_logits(
    s_logits: jax.Array, t_logits: jax.Array | None = None, labels: jax.Array | None = None
) -> None:
    """Raises a ValueError (at trace time) unless the shapes form a valid (B, C) batch.

    Args:
      s_logits: student logits, expected (B, C).
      t_logits: teacher logits, expected the same shape as `s_logits` (None to skip).
      labels: integer labels, expected (B,) (None to skip).
    """
    if jnp.ndim(s_logits) != 2:
        raise ValueError(
            f"Logits must have rank 2 (batch, classes); got shape {jnp.shape(s_logits)}."
        )
    if t_logits is not None and jnp.shape(t_logits) != jnp.shape(s_logits):
        raise ValueError(
            "Student and teacher logits must have the same shape; got student "
            f"{jnp.shape(s_logits)} and teacher {jnp.shape(t_logits)}."
        )
    if labels is not None and jnp.shape(labels) != jnp.shape(s_logits)[:1]:
        raise ValueError(
            f"Labels must have shape (batch,) = {jnp.shape(s_logits)[:1]}; got {jnp.shape(labels)}."
        )


def distiller_inputs(
    s_logits: jax.Array, t_logits: jax.Array, labels: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """A distiller's inputs checked, cast to float32 or wider, the teacher's gradient stopped."""
    check_logits(s_logits, t_logits, labels)
    return to_float(s_logits), lax.stop_gradient(to_float(t_logits))


def batch_mean(
    per_sample: jax.Array, axis_name: str | None = None, mask: jax.Array | None = None
) -> jax.Array:
    """Mean over the batch; with `axis_name`, the mean over the global batch (equal shards).

    With `mask` (B,) (padded rows False / 0), the mean over the valid rows only, of the
    global batch with `axis_name` (0 when no row is valid); masked rows get no gradient.
    `per_sample` may have trailing axes (B, ...): the mean is then per entry.
    """
    if mask is None:
        mean = jnp.mean(per_sample, axis=0)
        return mean if axis_name is None else lax.pmean(mean, axis_name)
    valid = jnp.asarray(mask).astype(bool)
    valid = valid.reshape(valid.shape + (1,) * (jnp.ndim(per_sample) - 1))
    total = jnp.sum(jnp.where(valid, per_sample, 0), axis=0)
    count = jnp.sum(valid).astype(total.dtype)  # valid rows (trailing axes are size 1)
    if axis_name is not None:
        total, count = lax.psum((total, count), axis_name)
    return total / jnp.maximum(count, 1)


def check_mask(mask: jax.Array | None, logits: jax.Array) -> None:
    """Raises a ValueError (at trace time) unless `mask` is None or of shape (B,)."""
    if mask is not None and jnp.shape(mask) != jnp.shape(logits)[:1]:
        raise ValueError(
            f"mask must have shape (batch,) = {jnp.shape(logits)[:1]}; got {jnp.shape(mask)}."
        )


def kl_per_sample(s_logits: jax.Array, t_logits: jax.Array) -> jax.Array:
    """KL(softmax(t) || softmax(s)) per row, from log-probabilities (never log of a softmax)."""
    s_logp = jax.nn.log_softmax(s_logits, axis=-1)
    t_logp = jax.nn.log_softmax(t_logits, axis=-1)
    return jnp.sum(jnp.exp(t_logp) * (t_logp - s_logp), axis=-1)


def softmax_xent(
    logits: jax.Array,
    labels: jax.Array,
    *,
    axis_name: str | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Mean cross-entropy of integer labels (torch's `F.cross_entropy`).

    Args:
      logits: (B, C), any float dtype; computed in at least float32.
      labels: (B,) integer class indices.
      axis_name: data axis; the result is then the global-batch mean.
      mask: (B,) row validity; the mean is then over the valid rows (`batch_mean`).

    Returns:
      A scalar.
    """
    check_logits(logits, labels=labels)
    check_mask(mask, logits)
    logp = jax.nn.log_softmax(to_float(logits), axis=-1)
    nll = -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return batch_mean(nll, axis_name, mask)


def topk_correct(logits: jax.Array, labels: jax.Array, *, k: int = 1) -> jax.Array:
    """Per-example 1.0 where the label is among the top-k logits, else 0.0; shape (B,).

    Ties count in the label's favour: the label is correct when fewer than k classes have
    a strictly larger logit.
    """
    check_logits(logits, labels=labels)
    logits = to_float(logits)
    label_logit = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=-1)
    num_above = jnp.sum(logits > label_logit, axis=-1)
    return (num_above < k).astype(logits.dtype)


def topk_accuracy(
    logits: jax.Array, labels: jax.Array, *, k: int = 1, axis_name: str | None = None
) -> jax.Array:
    """Fraction of examples whose label is in the top-k (global batch with `axis_name`)."""
    return batch_mean(topk_correct(logits, labels, k=k), axis_name)


def ensemble_logits(logits_list: Sequence[jax.Array]) -> jax.Array:
    """Teacher ensemble by logit averaging: the mean of several (B, C) logit arrays."""
    if not logits_list:
        raise ValueError("ensemble_logits needs at least one logits array.")
    shapes = {tuple(jnp.shape(x)) for x in logits_list}
    if len(shapes) != 1:
        raise ValueError(f"All ensemble logits must have the same shape; got {sorted(shapes)}.")
    return jnp.mean(jnp.stack([to_float(x) for x in logits_list]), axis=0)


def warmup_ramp(epoch: jax.Array | int, warmup_epochs: int, dtype: jnp.dtype) -> jax.Array:
    """min(epoch / warmup_epochs, 1) as a `dtype` scalar; `epoch` may be a traced integer."""
    return jnp.minimum(jnp.asarray(epoch).astype(dtype) / warmup_epochs, 1.0).astype(dtype)


def check_positive(name: str, value: float, *, owner: str) -> None:
    """Raises a ValueError naming the hyperparameter unless `value > 0`."""
    if not value > 0:
        raise ValueError(f"{owner}: {name} must be > 0; got {value!r}.")
