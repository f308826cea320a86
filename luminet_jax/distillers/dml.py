"""Deep mutual learning (Zhang et al. 2018): N students trained together, each learning
from the labels and from its peers' (constant) predictions."""

from __future__ import annotations

from collections.abc import Sequence

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
