"""OFD (overhaul of feature distillation): the teacher's margins and the partial L2 loss.

As mdistiller's `OFD.py` (from clovaai/overhaul-distillation); maps are NHWC, computed in
the promoted dtype of the inputs, at least float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import ndtr

from luminet_jax.distillers import feature_maps as fm


def ofd_margin(gamma: jax.Array, beta: jax.Array) -> jax.Array:
    """E[x | x < 0] for x ~ N(beta, gamma^2) per channel: the margins of OFD.

    Args:
      gamma, beta: (C,) scale and shift of the BatchNorm before the teacher's ReLU.

    Returns:
      (C,): m - s phi(m / s) / Phi(-m / s) with s = |gamma|, m = beta, where
      Phi(-m / s) > 0.001, else -3 s. A channel with gamma = 0 (a point mass at beta) gets
      beta when beta < 0 and 0 otherwise, where the reference divides by zero.
    """
    gamma, beta = fm.cast(gamma, beta)
    s, m = jnp.abs(gamma), beta
    positive = s > 0  # Reference: gamma = 0 divides by zero there; a point mass here.
    safe_s = jnp.where(positive, s, 1.0)
    ratio = jnp.where(positive, m / safe_s, 0.0)
    z = jnp.where(positive, -ratio, jnp.where(m < 0, jnp.inf, -jnp.inf))
    cdf = ndtr(z)
    used = cdf > 0.001
    safe_cdf = jnp.where(used, cdf, 1.0)
    expectation = -s * jnp.exp(-(ratio**2) / 2.0) / math.sqrt(2.0 * math.pi) / safe_cdf + m
    return jnp.where(used, expectation, -3.0 * s)


def ofd_loss(s_feat: jax.Array, t_feat: jax.Array, margin: jax.Array) -> jax.Array:
    """OFD's partial L2 for one stage, after the connector: sum over (h, w, c) of the batch mean.

    With t the teacher map pooled to the student's size and m the margin, the per-element
    loss is (s - m)^2 where s > m >= t, (s - t)^2 where s > t > m and t <= 0, and (s - t)^2
    where t > 0 (nothing where the student is already below a non-positive target).

    Args:
      s_feat: (B, h, w, C) the student map after its connector (carries the gradient).
      t_feat: (B, H, W, C) the teacher's pre-ReLU map; adaptive-average-pooled to (h, w) as
        the reference does (also when that enlarges it), without gradient.
      margin: (C,) from `ofd_margin`, without gradient.

    The distiller weights the stages 1/4, 1/2, 1 (last stage 1) and the sum by 1e-3.
    """
    s, t, margin = fm.cast(s_feat, t_feat, margin)
    fm.check_map(s, "student")
    fm.check_map(t, "teacher")
    t = lax.stop_gradient(fm.adaptive_avg_pool(t, s.shape[1:3]))
    if t.shape != s.shape or margin.shape != s.shape[-1:]:
        raise ValueError(
            f"ofd_loss: student {s.shape}, pooled teacher {t.shape} and margin "
            f"{margin.shape} do not match (channels must agree after the connector)."
        )
    m = lax.stop_gradient(margin)
    dtype = s.dtype
    loss = (
        (s - m) ** 2 * ((s > m) & (t <= m)).astype(dtype)
        + (s - t) ** 2 * ((s > t) & (t > m) & (t <= 0)).astype(dtype)
        + (s - t) ** 2 * (t > 0).astype(dtype)
    )
    return jnp.sum(jnp.mean(jnp.abs(loss), axis=0))
