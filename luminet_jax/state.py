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
      opt_state: the optax state of `optimized(state)`: the student's params, or the pair
        (params, extra_params) when a distiller owns learnable modules (one SGD group, as
        mdistiller optimizes the student and the connectors together).
      extra_params: learnable parameters owned by a distiller ({} for logit methods).
      extra_state: a distiller's non-learnable state (connector BatchNorm statistics, CRD's
        memories and normalization constants; {} for logit methods), updated by the step.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    extra_params: Any = None
    extra_state: Any = None


def has_extra(extra_params: Any) -> bool:
    """Whether a distiller added learnable parameters (decides the optimized tree)."""
    return bool(jax.tree.leaves(extra_params))


def optimized(params: Any, extra_params: Any) -> Any:
    """The tree the optimizer updates: params alone, or (params, extra_params)."""
    return (params, extra_params) if has_extra(extra_params) else params


def create_train_state(
    variables: Any, tx: optax.GradientTransformation, extra: dict[str, Any] | None = None
) -> TrainState:
    """Builds the initial state from a model's variables.

    Args:
      variables: `{"params": ..., "batch_stats": ...}` as returned by `model.init`; a missing
        "batch_stats" collection (models without BatchNorm) becomes {}. Dtypes are kept.
      tx: the optimizer.
      extra: a distiller's `init(...)` result, `{"params": ..., "state": ...}` (either may
        be missing); None or {} for distillers without learnable parts.

    Returns:
      A `TrainState` at step 0.
    """
    params = variables["params"]
    extra = extra or {}
    extra_params = extra.get("params") or {}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(optimized(params, extra_params)),
        extra_params=extra_params,
        extra_state=extra.get("state") or {},
    )
