"""Hinton knowledge distillation: temperature-softened KL(teacher || student), times T^2."""

from __future__ import annotations

import dataclasses

import jax

from luminet_jax.distillers import base, common


def kd_loss(
    s_logits: jax.Array,
    t_logits: jax.Array,
    *,
    temperature: float,
    axis_name: str | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """T^2 * batchmean KL(softmax(z_t / T) || softmax(z_s / T)) (mdistiller's `kd_loss`).

    Args:
      s_logits: (B, C) student logits.
      t_logits: (B, C) teacher logits (not detached here).
      temperature: T.
      axis_name: data axis; the batch mean is then over the global batch.
      mask: (B,) row validity (padded RoIs); the mean is then over the valid rows.

    Returns:
      A scalar.
    """
    common.check_logits(s_logits, t_logits)
    common.check_mask(mask, s_logits)
    s = common.to_float(s_logits) / temperature
    t = common.to_float(t_logits) / temperature
    return temperature**2 * common.batch_mean(common.kl_per_sample(s, t), axis_name, mask)


@dataclasses.dataclass(frozen=True, kw_only=True)
class KD(base.Distiller):
    """loss = ce_weight * CE + kd_weight * kd_loss (no warmup, as in mdistiller)."""

    ce_weight: float = 0.1
    kd_weight: float = 0.9
    temperature: float = 4.0

    def __post_init__(self):
        common.check_positive("temperature", self.temperature, owner=type(self).__name__)

    def _prepare(self, logits: jax.Array) -> jax.Array:
        """Hook for pre-steps on both logits (identity here; standardisation in KD-LS)."""
        return logits

    def loss(self, x: base.Inputs) -> base.LossOutput:
        labels, axis_name, mask = x.labels, x.axis_name, x.mask
        s_logits, t_logits = common.distiller_inputs(x.s_logits, x.t_logits, labels)
        ce = self.ce_weight * common.softmax_xent(s_logits, labels, axis_name=axis_name, mask=mask)
        kd = self.kd_weight * kd_loss(
            self._prepare(s_logits),
            self._prepare(t_logits),
            temperature=self.temperature,
            axis_name=axis_name,
            mask=mask,
        )
        return base.LossOutput(total=ce + kd, parts={"loss_ce": ce, "loss_kd": kd})
