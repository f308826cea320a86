"""Vanilla training: cross-entropy only (teachers, and the plain-student baseline)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from luminet_jax.distillers import base, common


@dataclasses.dataclass(frozen=True, kw_only=True)
class Vanilla(base.LogitDistiller):
    """loss = ce_weight * CE; the teacher is ignored (the step passes t_logits=None)."""

    uses_teacher: ClassVar[bool] = False

    ce_weight: float = 1.0

    def __call__(
        self,
        s_logits: jax.Array,
        t_logits: jax.Array | None,
        labels: jax.Array,
        *,
        epoch: jax.Array | int,
        axis_name: str | None = None,
        mask: jax.Array | None = None,
        **unused: Any,  # the contract's feature/state keywords (base.Distiller)
    ) -> base.LossOutput:
        del t_logits, epoch  # Unused: CE only.
        common.check_logits(s_logits, labels=labels)
        ce = self.ce_weight * common.softmax_xent(s_logits, labels, axis_name=axis_name, mask=mask)
        # A zero "loss_kd" keeps the logged keys the same for every method.
        return base.LossOutput(total=ce, parts={"loss_ce": ce, "loss_kd": jnp.zeros_like(ce)})
