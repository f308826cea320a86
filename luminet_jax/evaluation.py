"""Evaluation over a stream of (padded, masked) batches: top-1, top-5 and loss."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np


def evaluate(
    eval_step: Callable[[Any, Any], dict[str, jax.Array]],
    variables: Any,
    batches: Iterable[Any],
) -> dict[str, float]:
    """Runs `eval_step` over `batches` and reduces the sums it returns.

    The per-batch sums are accumulated on the device; the host reads them once at the end
    (one `device_get`) and divides in float64, so padded examples (mask 0) never count and
    every real example counts exactly once.

    Args:
      eval_step: `eval_step(variables, batch) -> {"correct1", "correct5", "loss_sum",
        "count"}` (from `steps.make_eval_step`, jitted or sharded).
      variables: `{"params", "batch_stats"}` as `eval_step` expects them.
      batches: batches in the form `eval_step` takes (global arrays for a sharded step).

    Returns:
      {"top1", "top5", "loss", "count"} as Python numbers (top-k as fractions in [0, 1]),
      plus "member{k}_top1" and "member{k}_top5" for each peer k of a cohort model
      (sums "member_correct1"/"member_correct5" of shape (N,)).

    Raises:
      ValueError: the batches contained no (unmasked) example.
    """
    totals = None
    for batch in batches:
        sums = eval_step(variables, batch)
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    if totals is None:
        raise ValueError("evaluate() got no batches.")
    totals = {k: np.asarray(v, np.float64) for k, v in jax.device_get(totals).items()}
    count = totals["count"]
    if count <= 0:
        raise ValueError("evaluate() got batches without any unmasked example.")
    result = {
        "top1": float(totals["correct1"] / count),
        "top5": float(totals["correct5"] / count),
        "loss": float(totals["loss_sum"] / count),
        "count": int(round(float(count))),
    }
    for top in ("1", "5"):  # a cohort's peers, one entry each
        for k, correct in enumerate(totals.get(f"member_correct{top}", ())):
            result[f"member{k}_top{top}"] = float(correct / count)
    return result
