"""The distiller contract: hyperparameters in a frozen dataclass, a pure loss call."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

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
    state: Any = None  # the distiller's new extra state (None: unchanged)


class Distiller(Protocol):
    """What the train step calls (DESIGN.md sections 2 and 6).

    `uses_teacher` is False for methods that ignore the teacher (vanilla): the step then
    skips the teacher's forward pass entirely. `uses_feats` True makes the step pass the
    models' feature dicts (`s_feats`, `t_feats`); `teacher_train` True runs the teacher's
    BatchNorm on batch statistics (OFD; its running statistics are never updated).

    Distillers with learnable modules or state implement `init`; its `params` are
    optimized with the student (`TrainState.extra_params`), its `state` is carried and
    checkpointed (`TrainState.extra_state`) and passed back as `extra`. Logit distillers
    have neither and ignore the optional keywords.
    """

    uses_teacher: bool
    uses_feats: bool
    teacher_train: bool

    def init(
        self,
        rng: jax.Array,
        s_feats: dict[str, jax.Array],  # the student's feats on a dummy batch
        t_feats: dict[str, jax.Array] | None,  # the teacher's feats on the same batch
        *,
        teacher_variables: Any = None,  # the frozen teacher's variables
        num_train: int | None = None,  # training-set size (CRD's memories)
        teacher: Any = None,  # the teacher module (model functions such as bn_before_relu)
    ) -> dict[str, Any]: ...  # {"params": ..., "state": ...}; {} without learnable parts

    def __call__(
        self,
        s_logits: jax.Array,  # (B, C) student logits, float32
        t_logits: jax.Array | None,  # (B, C) teacher logits (no gradient), or None
        labels: jax.Array,  # (B,) int32
        *,
        epoch: jax.Array | int,  # 1-based integer epoch, computed from the step counter
        axis_name: str | None = None,  # data axis inside shard_map; None on one device
        s_feats: dict[str, jax.Array] | None = None,  # student features (uses_feats)
        t_feats: dict[str, jax.Array] | None = None,  # teacher features, no gradient
        index: jax.Array | None = None,  # (B,) sample indices of the batch (CRD)
        extra: dict[str, Any] | None = None,  # {"params", "state"} from `init`
        rng: jax.Array | None = None,  # a per-step key (CRD's negatives)
        mask: jax.Array | None = None,  # (B,) row validity (padded RoIs); None = all valid
    ) -> LossOutput: ...


class LogitDistiller:
    """Mixin for distillers without learnable parts: the contract's defaults."""

    uses_feats = False
    teacher_train = False

    def init(self, rng, s_feats, t_feats, **kwargs) -> dict[str, Any]:
        del rng, s_feats, t_feats, kwargs
        return {}
