"""A teacher ensemble: the mean of its members' logits.

The members are registered as submodules `members_0`, `members_1`, ..., so an ensemble's
variables are `{"params": {"members_0": <member 0's params>, ...}, "batch_stats": {...}}`,
built from the members' own variables with `Ensemble.combine_variables`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class Ensemble(nn.Module):
    """Averages the logits of `members` (each a zoo classifier).

    Attributes:
      members: the member modules (all with the same number of classes).

    Returns from `__call__`: (mean logits, feats of the first member). Use it with
    `train=False` (teachers are frozen); with `train=True` every member updates its own
    batch statistics.
    """

    members: Sequence[nn.Module]

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        if not self.members:
            raise ValueError("Ensemble needs at least one member.")
        outputs = [member(x, train=train) for member in self.members]
        logits = jnp.mean(jnp.stack([out[0] for out in outputs]), axis=0)
        return logits, outputs[0][1]

    @staticmethod
    def combine_variables(member_variables: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Stacks members' `{"params", "batch_stats"}` into the ensemble's variables.

        Args:
          member_variables: one variables dict per member, in member order. A missing
            "batch_stats" collection counts as empty.

        Returns:
          {"params": {"members_i": ...}, "batch_stats": {"members_i": ...}} (a member without
          batch statistics gets no "batch_stats" entry).
        """
        params, stats = {}, {}
        for i, variables in enumerate(member_variables):
            params[f"members_{i}"] = variables["params"]
            if variables.get("batch_stats"):
                stats[f"members_{i}"] = variables["batch_stats"]
        return {"params": params, "batch_stats": stats}
