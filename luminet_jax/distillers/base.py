"""The distiller contract: hyperparameters in a frozen dataclass, a pure loss of one batch.

A distiller subclasses `Distiller` (as a frozen dataclass of its hyperparameters), sets the
class attributes that differ from the defaults and implements `loss(inputs)`. The public call
of DESIGN.md section 6, `distiller(s_logits, t_logits, labels, *, epoch, ...)`, packs its
arguments into one `Inputs` and calls `loss`; the train steps read the class attributes
directly, so no caller probes a distiller for what it has.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

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


@dataclasses.dataclass(frozen=True)
class Inputs:
    """One batch as a distiller sees it (the keywords of the public call).

    Attributes:
      s_logits: (B, C) student logits, float32 (or wider).
      t_logits: (B, C) teacher logits (no gradient), or None without a teacher.
      labels: (B,) int32.
      epoch: the 1-based integer epoch, computed on device from the step counter.
      axis_name: the data axis inside shard_map; None on one device.
      s_feats: the student's feature dict (when `uses_feats`).
      t_feats: the teacher's feature dict, no gradient (when `uses_feats`).
      index: (B,) sample indices of the batch (CRD's memories).
      extra: {"params", "state"} from `init` (distillers with learnable parts or state).
      rng: a per-step key, the same on every shard (CRD's negatives).
      mask: (B,) row validity (padded detection RoIs); None = all rows valid.
    """

    s_logits: jax.Array
    t_logits: jax.Array | None
    labels: jax.Array
    epoch: jax.Array | int
    axis_name: str | None = None
    s_feats: dict[str, jax.Array] | None = None
    t_feats: dict[str, jax.Array] | None = None
    index: jax.Array | None = None
    extra: dict[str, Any] | None = None
    rng: jax.Array | None = None
    mask: jax.Array | None = None


class Distiller:
    """What the train steps call (DESIGN.md sections 2 and 6), with the contract's defaults.

    Class attributes (override where a method differs):
      uses_teacher: False for methods that ignore the teacher (vanilla, DML): the step then
        skips the teacher's forward pass and the trainer loads no teacher.
      uses_feats: True makes the step pass both models' feature dicts.
      teacher_train: True runs the teacher's BatchNorm on batch statistics (OFD; its running
        statistics are never updated).
      uses_train_labels: True when `data_state` needs the label of every training sample
        (CRD's sampler); the trainer then reads them once, before the first step.

    Distillers with learnable modules or state override `init`: its `params` are optimized
    with the student (`TrainState.extra_params`), its `state` is carried and checkpointed
    (`TrainState.extra_state`) and passed back as `Inputs.extra`.
    """

    uses_teacher: ClassVar[bool] = True
    uses_feats: ClassVar[bool] = False
    teacher_train: ClassVar[bool] = False
    uses_train_labels: ClassVar[bool] = False

    def init(
        self,
        rng: jax.Array,
        s_feats: dict[str, jax.Array],  # the student's feats on a dummy batch
        t_feats: dict[str, jax.Array] | None,  # the teacher's feats on the same batch
        *,
        teacher_variables: Any = None,  # the frozen teacher's variables
        num_train: int | None = None,  # training-set size (CRD's memories)
        teacher: Any = None,  # the teacher module (model functions such as bn_before_relu)
    ) -> dict[str, Any]:
        """{"params": ..., "state": ...} of the learnable parts; {} without any."""
        del rng, s_feats, t_feats, teacher_variables, num_train, teacher
        return {}

    def data_state(self, state: dict[str, Any], labels: Any) -> dict[str, Any]:
        """The extra state completed from every training label (`uses_train_labels`)."""
        del labels
        return state

    def loss(self, inputs: Inputs) -> LossOutput:
        """The loss of one batch."""
        raise NotImplementedError

    def __call__(
        self,
        s_logits: jax.Array,
        t_logits: jax.Array | None,
        labels: jax.Array,
        *,
        epoch: jax.Array | int,
        axis_name: str | None = None,
        s_feats: dict[str, jax.Array] | None = None,
        t_feats: dict[str, jax.Array] | None = None,
        index: jax.Array | None = None,
        extra: dict[str, Any] | None = None,
        rng: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> LossOutput:
        """The public call (DESIGN.md section 6): `loss` of these inputs."""
        return self.loss(
            Inputs(
                s_logits,
                t_logits,
                labels,
                epoch,
                axis_name,
                s_feats,
                t_feats,
                index,
                extra,
                rng,
                mask,
            )
        )
