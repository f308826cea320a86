"""A cohort of students trained together (deep mutual learning, DESIGN.md section 6).

The members are submodules `members_0`, `members_1`, ..., so a cohort's variables are
`{"params": {"members_0": <member 0's params>, ...}, "batch_stats": {...}}`: the whole
cohort is one student for the optimizer, the train step and the checkpoints. Member 0 is
the student the run reports; the others are its peers.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

COHORT_LOGITS = "cohort_logits"  # feats key: (N, B, C), every member's logits


class Cohort(nn.Module):
    """Runs every member on the same images.

    Attributes:
      members: N >= 2 zoo classifiers with the same number of classes.

    Returns from `__call__`: (member 0's logits, member 0's feats plus
    feats["cohort_logits"], the (N, B, C) stack of all members' logits, member 0 first).
    With `train=True` every member updates its own batch statistics.
    """

    members: Sequence[nn.Module]

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        if len(self.members) < 2:
            raise ValueError(f"A cohort needs at least two members; got {len(self.members)}.")
        outputs = [member(x, train=train) for member in self.members]
        logits = [out[0] for out in outputs]
        dtype = jnp.result_type(*logits)
        feats = dict(outputs[0][1])
        feats[COHORT_LOGITS] = jnp.stack([z.astype(dtype) for z in logits])
        return logits[0], feats
