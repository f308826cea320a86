"""Decoupled knowledge distillation (Zhao et al. 2022): TCKD + NCKD."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from luminet_jax.distillers import base, common

# mdistiller masks the target class out of the non-target softmax by subtracting this.
TARGET_MASK_OFFSET = 1000.0


def _binary_log_probs(logits: jax.Array, gt_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """log p(target) and log p(non-target) per row, each (B,), from logsumexps."""
    # Reference: mdistiller takes log of summed softmax probabilities, which is -inf/NaN
    # in float32 once one class dominates; logsumexp over masked logits is the same value.
    lse = jax.nn.logsumexp(logits, axis=-1)
    log_target = jax.nn.logsumexp(logits, axis=-1, where=gt_mask) - lse
    log_other = jax.nn.logsumexp(logits, axis=-1, where=~gt_mask) - lse
    return log_target, log_other


def dkd_parts(
    s_logits: jax.Array, t_logits: jax.Array, labels: jax.Array, *, temperature: float
) -> tuple[jax.Array, jax.Array]:
    """Per-sample TCKD and NCKD, each (B,), already multiplied by T^2.

    Args:
      s_logits: (B, C) student logits.
      t_logits: (B, C) teacher logits.
      labels: (B,) integer targets.
      temperature: T.

    Returns:
      (tckd, nckd), per sample; `dkd_loss` is their weighted batch mean.
    """
    common.check_logits(s_logits, t_logits, labels)
    s = common.to_float(s_logits) / temperature
    t = common.to_float(t_logits) / temperature
    gt_mask = jax.nn.one_hot(labels, s.shape[-1], dtype=jnp.bool_)  # (B, C)

    s_tgt, s_oth = _binary_log_probs(s, gt_mask)
    t_tgt, t_oth = _binary_log_probs(t, gt_mask)
    tckd = jnp.exp(t_tgt) * (t_tgt - s_tgt) + jnp.exp(t_oth) * (t_oth - s_oth)

    offset = TARGET_MASK_OFFSET * gt_mask.astype(s.dtype)
    nckd = common.kl_per_sample(s - offset, t - offset)
    scale = temperature**2
    return scale * tckd, scale * nckd


def dkd_loss(
    s_logits: jax.Array,
    t_logits: jax.Array,
    labels: jax.Array,
    *,
    alpha: float,
    beta: float,
    temperature: float,
    axis_name: str | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """alpha * TCKD + beta * NCKD, each summed over classes, times T^2, divided by B.

    Args:
      s_logits: (B, C) student logits.
      t_logits: (B, C) teacher logits (not detached here).
      labels: (B,) integer targets.
      alpha: TCKD weight.
      beta: NCKD weight.
      temperature: T.
      axis_name: data axis; the division is then by the global batch.
      mask: (B,) row validity (padded RoIs); the division is then by the valid rows.

    Returns:
      A scalar (no warmup ramp; the distiller applies it).
    """
    common.check_mask(mask, s_logits)
    tckd, nckd = dkd_parts(s_logits, t_logits, labels, temperature=temperature)
    return common.batch_mean(alpha * tckd + beta * nckd, axis_name, mask)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DKD(base.Distiller):
    """loss = ce_weight * CE + min(epoch / warmup_epochs, 1) * dkd_loss."""

    ce_weight: float = 1.0
    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    warmup_epochs: int = 20

    def __post_init__(self):
        owner = type(self).__name__
        common.check_positive("temperature", self.temperature, owner=owner)
        common.check_positive("warmup_epochs", self.warmup_epochs, owner=owner)

    def _prepare(self, logits: jax.Array) -> jax.Array:
        """Hook for pre-steps on both logits (identity here; standardisation in DKD-LS)."""
        return logits

    def loss(self, x: base.Inputs) -> base.LossOutput:
        labels, axis_name, mask = x.labels, x.axis_name, x.mask
        s_logits, t_logits = common.distiller_inputs(x.s_logits, x.t_logits, labels)
        ce = self.ce_weight * common.softmax_xent(s_logits, labels, axis_name=axis_name, mask=mask)
        kd = dkd_loss(
            self._prepare(s_logits),
            self._prepare(t_logits),
            labels,
            alpha=self.alpha,
            beta=self.beta,
            temperature=self.temperature,
            axis_name=axis_name,
            mask=mask,
        )
        kd = common.warmup_ramp(x.epoch, self.warmup_epochs, kd.dtype) * kd
        return base.LossOutput(total=ce + kd, parts={"loss_ce": ce, "loss_kd": kd})
