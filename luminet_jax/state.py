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
      opt_state: the optax state of `trainable(state)`: the student's params, or the pair
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


def _optimized(params: Any, extra_params: Any) -> Any:
    # The one place that knows the optimizer's layout: a distiller without learnable parts
    # leaves the plain optimizer state of the student's params.
    return (params, extra_params) if jax.tree.leaves(extra_params) else params


def trainable(state: TrainState) -> Any:
    """The tree the optimizer updates (one SGD group): the student's params and the
    distiller's learnable parts; `split_trainable` gives both back."""
    return _optimized(state.params, state.extra_params)


def split_trainable(tree: Any, state: TrainState) -> tuple[Any, Any]:
    """(params, extra_params) of a tree shaped as `trainable(state)`."""
    return tree if jax.tree.leaves(state.extra_params) else (tree, state.extra_params)


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
        opt_state=tx.init(_optimized(params, extra_params)),
        extra_params=extra_params,
        extra_state=extra.get("state") or {},
    )
