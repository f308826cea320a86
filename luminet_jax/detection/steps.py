"""Pure detection train / predict steps on `luminet_jax.steps.make_step` (not jitted).

The detector's "frozen" collection (FrozenBatchNorm buffers, stem and res2 kernels) rides in
`TrainState.batch_stats` and is never updated; only "params" is optimized (weight decay
included). Build the state with

    v = rcnn.init_variables(model, seed)   # or detection.convert's import
    state = state_lib.create_train_state({"params": v["params"], "batch_stats": v["frozen"]}, tx)

and run `sharding.shard_train_step(make_train_step(model, tx, axis_name="data"), mesh)`.
Under shard_map the step differentiates the global loss (`pmean` of the shards' shares,
`detection.losses`), so its gradients are the global-batch gradients (`luminet_jax.steps`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax
from jax import lax

from luminet_jax import state as state_lib
from luminet_jax import steps
from luminet_jax.detection import losses, rcnn

Metrics = dict[str, jax.Array]
# (aux, batch, teacher_variables, step) -> (loss, parts): a term added to the detector's loss.
ExtraLoss = Callable[[dict, dict, Any, jax.Array], tuple[jax.Array, Metrics]]


def variables_of(state: state_lib.TrainState) -> dict:
    """The detector's variables {"params", "frozen"} held by a TrainState."""
    return {"params": state.params, "frozen": state.batch_stats}


def make_train_step(
    model: rcnn.FasterRCNN,
    tx: optax.GradientTransformation,
    *,
    axis_name: str | None = None,
    lr_fn: Callable[[jax.Array], jax.Array] | None = None,
    seed: int = 0,
    extra_loss: ExtraLoss | None = None,
) -> Callable[[state_lib.TrainState, object, dict], tuple[state_lib.TrainState, Metrics]]:
    """Builds `train_step(state, teacher_variables, batch) -> (state, metrics)`.

    The generic `luminet_jax.steps.make_step` over `detection_loss`. Vanilla without
    `extra_loss`: `teacher_variables` is then accepted for the trainer's calling convention
    and ignored. With `extra_loss` (distillation, `detection.distill`),
    `extra_loss(aux, batch, teacher_variables, step)` gives a global-batch loss added to the
    detector's and its parts, logged beside the detector's. The samplers' key is
    `fold_in(key(seed), step)`, the same on every shard (images then fold in their global
    index). Metrics (global batch): "loss", the four losses, detectron2's
    "fast_rcnn/*" classification stats, "grad_norm", "param_norm" and "lr" (with `lr_fn`).
    """
    loss_fn = detection_loss(model, axis_name=axis_name, seed=seed, extra_loss=extra_loss)
    return steps.make_step(loss_fn, tx, lr_fn=lr_fn)


def detection_loss(
    model: rcnn.FasterRCNN,
    *,
    axis_name: str | None = None,
    seed: int = 0,
    extra_loss: ExtraLoss | None = None,
) -> steps.LossFn:
    """The detection task's `steps.LossFn` (the arguments as `make_train_step`'s)."""

    def loss_fn(params, extra_params, state, teacher_variables, batch):
        del extra_params  # a detector's distillers have no learnable parts
        key = jax.random.fold_in(jax.random.key(seed), state.step)
        variables = {"params": params, "frozen": state.batch_stats}
        parts, aux = rcnn.train_forward(model, variables, batch, key, axis_name=axis_name)
        if axis_name is not None:
            parts = lax.pmean(parts, axis_name)  # each shard's share -> global losses
        loss = rcnn.total_loss(parts)
        if extra_loss is not None:
            extra, extra_parts = extra_loss(aux, batch, teacher_variables, state.step)
            loss, parts = loss + extra, {**parts, **extra_parts}
        stats = losses.fast_rcnn_metrics(
            aux["class_logits"], aux["roi_classes"], aux["roi_valid"], axis_name=axis_name
        )
        metrics = {**parts, **{f"fast_rcnn/{k}": v for k, v in stats.items()}}
        return loss, (metrics, {})

    return loss_fn


def make_predict_step(model: rcnn.FasterRCNN) -> Callable[[dict, dict], dict]:
    """`predict(variables, batch)` -> detections (`coco.evaluate`'s contract), per shard."""
    return lambda variables, batch: rcnn.predict(model, variables, batch)
