"""The distiller contract: hyperparameters in a frozen dataclass, a pure loss call."""

from __future__ import annotations

import dataclasses
from typing import Protocol

import flax.struct
import jax


@flax.struct.dataclass
class LossOutput:
    """A distiller's result: the total loss and its named parts (scalars).

    As in mdistiller, the parts are already weighted (and ramped), so `total` is their sum:
    `parts = {"loss_ce": ce_weight * CE, "loss_kd": ramp * weight * KD-term}`.
    """

    total: jax.Array
    parts: dict[str, jax.Array] = dataclasses.field(default_factory=dict)


class Distiller(Protocol):
    """What the train step calls.

    `uses_teacher` is False for methods that ignore the teacher (vanilla): the step then
    skips the teacher's forward pass entirely.
    """

    uses_teacher: bool

    def __call__(
        self,
        s_logits: jax.Array,  # (B, C) student logits, float32
        t_logits: jax.Array | None,  # (B, C) teacher logits (no gradient), or None
        labels: jax.Array,  # (B,) int32
        *,
        epoch: jax.Array | int,  # 1-based integer epoch, computed from the step counter
        axis_name: str | None = None,  # data axis inside shard_map; None on one device
    ) -> LossOutput: ...
