"""Vanilla training: cross-entropy only (teachers, and the plain-student baseline)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from luminet_jax.distillers import base, common


@dataclasses.dataclass(frozen=True, kw_only=True)
class Vanilla(base.Distiller):
    """loss = ce_weight * CE; the teacher is ignored (the step passes t_logits=None)."""

    uses_teacher: ClassVar[bool] = False

    ce_weight: float = 1.0

    def loss(self, x: base.Inputs) -> base.LossOutput:
        common.check_logits(x.s_logits, labels=x.labels)
        ce = common.softmax_xent(x.s_logits, x.labels, axis_name=x.axis_name, mask=x.mask)
        ce = self.ce_weight * ce
        # A zero "loss_kd" keeps the logged keys the same for every method.
        return base.LossOutput(total=ce, parts={"loss_ce": ce, "loss_kd": jnp.zeros_like(ce)})
