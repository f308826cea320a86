"""The training state: the student's variables, the optimizer state and the step counter."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Everything a training checkpoint holds (the teacher is never part of it).

    Attributes:
      step: int32 scalar, the number of optimizer updates done so far.
      params: the student's "params" collection.
      batch_stats: the student's "batch_stats" collection ({} for models without BatchNorm).
      opt_state: the optax state for `params` (and `extra_params`, when present).
      extra_params: learnable parameters owned by a distiller (None for logit methods).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    extra_params: Any = None


def create_train_state(variables: Any, tx: optax.GradientTransformation) -> TrainState:
    """Builds the initial state from a model's variables.

    Args:
      variables: `{"params": ..., "batch_stats": ...}` as returned by `model.init`; a missing
        "batch_stats" collection (models without BatchNorm) becomes {}. Dtypes are kept.
      tx: the optimizer.

    Returns:
      A `TrainState` at step 0.
    """
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
    )
