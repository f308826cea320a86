"""A teacher ensemble: the mean of its teachers' logits.

The teachers are registered as submodules `teachers_0`, `teachers_1`, ..., so an ensemble's
variables are `{"params": {"teachers_0": <teacher 0's params>, ...}, "batch_stats": {...}}`,
built from the teachers' own variables with `Ensemble.combine_variables`. (Teachers are never
checkpointed: these keys exist only in memory.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class Ensemble(nn.Module):
    """Averages the logits of `teachers` (each a zoo classifier).

    Attributes:
      teachers: the teacher modules (all with the same number of classes).

    Returns from `__call__`: (mean logits, feats of the first teacher). Use it with
    `train=False` (teachers are frozen); with `train=True` every teacher updates its own
    batch statistics.
    """

    teachers: Sequence[nn.Module]

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        if not self.teachers:
            raise ValueError("Ensemble needs at least one teacher.")
        outputs = [teacher(x, train=train) for teacher in self.teachers]
        logits = jnp.mean(jnp.stack([out[0] for out in outputs]), axis=0)
        return logits, outputs[0][1]

    @staticmethod
    def combine_variables(teacher_variables: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Stacks the teachers' `{"params", "batch_stats"}` into the ensemble's variables.

        Args:
          teacher_variables: one variables dict per teacher, in order. A missing
            "batch_stats" collection counts as empty.

        Returns:
          {"params": {"teachers_i": ...}, "batch_stats": {"teachers_i": ...}} (a teacher
          without batch statistics gets no "batch_stats" entry).
        """
        params, stats = {}, {}
        for i, variables in enumerate(teacher_variables):
            params[f"teachers_{i}"] = variables["params"]
            if variables.get("batch_stats"):
                stats[f"teachers_{i}"] = variables["batch_stats"]
        return {"params": params, "batch_stats": stats}
