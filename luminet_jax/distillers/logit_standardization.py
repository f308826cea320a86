"""Logit standardisation (Sun et al. 2024) as a pre-step, and the KD-LS / DKD-LS distillers."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from luminet_jax.distillers import common, dkd, kd

STD_EPS = 1e-7


def standardize(logits: jax.Array) -> jax.Array:
    """Per sample over classes: (z - mean) / (std + 1e-7), std unbiased (torch's default).

    Args:
      logits: (B, C) logits, C >= 2; computed in at least float32.

    Returns:
      (B, C) standardised logits.
    """
    common.check_logits(logits)
    if logits.shape[-1] < 2:
        raise ValueError(f"standardize needs at least 2 classes; got shape {logits.shape}.")
    z = common.to_float(logits)
    centered = z - jnp.mean(z, axis=-1, keepdims=True)
    var = jnp.sum(jnp.square(centered), axis=-1, keepdims=True) / (z.shape[-1] - 1)
    # Reference: torch's std backward is NaN for a constant row; here that row gets std 0
    # and a zero gradient through it (sqrt's derivative at 0 is infinite).
    positive = var > 0
    std = jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)
    return centered / (std + STD_EPS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class KDLS(kd.KD):
    """KD on standardised student and teacher logits; CE on the raw student logits."""

    def _prepare(self, logits: jax.Array) -> jax.Array:
        return standardize(logits)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DKDLS(dkd.DKD):
    """DKD on standardised student and teacher logits; CE on the raw student logits."""

    def _prepare(self, logits: jax.Array) -> jax.Array:
        return standardize(logits)
