"""Deep mutual learning (Zhang et al. 2018): N students trained together, each learning
from the labels and from its peers' (constant) predictions.

The students are one cohort model (`models.get_model(name, peers=...)`, DESIGN.md
section 6): its feats carry every member's logits under "cohort_logits", so the ordinary
train step optimizes, checkpoints and evaluates all members with no DML branch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax import lax

from luminet_jax.distillers import base, common


def dml_student_losses(
    logits: Sequence[jax.Array],
    labels: jax.Array,
    *,
    temperature: float = 1.0,
    axis_name: str | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Each student's CE and mean KL(peer || self), (N,) arrays.

    kl[i] = T^2 / (N - 1) * sum_{j != i} batchmean KL(softmax(z_j / T) || softmax(z_i / T)),
    the peers' predictions without gradient (the reference detaches them), so the
    gradient of sum_i (ce[i] + kl[i]) w.r.t. student i is that of its own loss alone.

    Args:
      logits: N >= 2 arrays of (B, C) student logits.
      labels: (B,) int labels.
      temperature: T (1 in the paper and its code).
      axis_name: data axis; the means are then over the global batch.

    Returns:
      (ce, kl), each (N,).
    """
    if len(logits) < 2:
        raise ValueError(f"DML needs at least two students; got {len(logits)}.")
    for z in logits:
        common.check_logits(z, logits[0], labels)
    logits = [common.to_float(z) for z in logits]
    ce = jnp.stack([common.softmax_xent(z, labels, axis_name=axis_name) for z in logits])
    kl = []
    for i, z_i in enumerate(logits):
        peers = [
            common.kl_per_sample(z_i / temperature, lax.stop_gradient(z_j) / temperature)
            for j, z_j in enumerate(logits)
            if j != i
        ]
        per_sample = sum(peers) / len(peers)
        kl.append(temperature**2 * common.batch_mean(per_sample, axis_name))
    return ce, jnp.stack(kl)


def dml_loss(
    logits: Sequence[jax.Array],
    labels: jax.Array,
    *,
    ce_weight: float = 1.0,
    kd_weight: float = 1.0,
    temperature: float = 1.0,
    axis_name: str | None = None,
) -> base.LossOutput:
    """The summed DML objective of N students (one backward pass trains them all).

    Args:
      logits: N >= 2 arrays of (B, C) student logits.
      labels: (B,) int labels.
      ce_weight: weight of every student's CE.
      kd_weight: weight of every student's mean KL(peer || self).
      temperature: T.
      axis_name: data axis (global-batch means).

    Returns:
      LossOutput with parts "loss_ce" and "loss_kd", each weighted and summed over the
      students (the per-student values: `dml_student_losses`); total = their sum.
    """
    ce, kl = dml_student_losses(logits, labels, temperature=temperature, axis_name=axis_name)
    parts = {"loss_ce": ce_weight * jnp.sum(ce), "loss_kd": kd_weight * jnp.sum(kl)}
    return base.LossOutput(total=parts["loss_ce"] + parts["loss_kd"], parts=parts)


COHORT_LOGITS = "cohort_logits"  # models.cohort.COHORT_LOGITS (distillers import no models)


# Reference: the paper's algorithm updates the students one after the other within a step
# (each against its peers' fresh predictions); here all take one joint step from the same
# predictions (one optimizer over the cohort), as the common PyTorch implementations do.
@dataclasses.dataclass(frozen=True, kw_only=True)
class DML(base.Distiller):
    """`dml_loss` over the cohort's members; the teacher is unused.

    Reads s_feats["cohort_logits"] (N, B, C) from a cohort student
    (`config.student.peers`); `s_logits` is member 0's row of it. Parts "loss_ce" and
    "loss_kd" are summed over the members (the per-member values: `dml_student_losses`).
    """

    uses_teacher: ClassVar[bool] = False
    uses_feats: ClassVar[bool] = True

    ce_weight: float = 1.0
    kd_weight: float = 1.0
    temperature: float = 1.0

    def __post_init__(self):
        common.check_positive("temperature", self.temperature, owner=type(self).__name__)

    def init(self, rng, s_feats, t_feats, **kwargs) -> dict[str, Any]:
        del rng, t_feats, kwargs
        if COHORT_LOGITS not in s_feats:
            raise KeyError(
                f"DML needs a cohort student (feats {COHORT_LOGITS!r}): set "
                "config.student.peers to the peers' model names, e.g. the teacher's."
            )
        return {}

    def loss(self, x: base.Inputs) -> base.LossOutput:
        if x.s_feats is None or COHORT_LOGITS not in x.s_feats:
            raise KeyError(f"DML needs s_feats[{COHORT_LOGITS!r}] from a cohort student.")
        cohort = x.s_feats[COHORT_LOGITS]
        return dml_loss(
            [cohort[i] for i in range(cohort.shape[0])],
            x.labels,
            ce_weight=self.ce_weight,
            kd_weight=self.kd_weight,
            temperature=self.temperature,
            axis_name=x.axis_name,
        )
