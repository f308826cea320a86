"""Pure train and eval steps. `sharding.py` runs them per shard under `jax.shard_map`.

Both factories return un-jitted functions. With `axis_name=None` they are ordinary
single-device functions; with `axis_name="data"` they are written for one shard of the
global batch and reduce over the data axis with `lax.pmean`/`lax.psum`.

Gradients under `jax.shard_map` (which checks varying manual axes, `check_vma=True`): the
parameters are replicated (invariant over "data"), so JAX transposes their implicit
broadcast into a `psum` of the per-shard cotangents. The step therefore differentiates the
*global* loss, `pmean` of the per-shard totals (a no-op for parts a distiller already
averaged over the axis), and the gradients come out as the exact global-batch gradients
with no further collective. `steps_test.py` checks this against the one-device step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from luminet_jax import state as state_lib
from luminet_jax.data import normalize

Metrics = dict[str, jax.Array]


def _loss_dtype(x: jax.Array) -> jax.Array:
    """Losses run in at least float32 (bf16 logits are upcast; float64 stays float64)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _pmean(x: Any, axis_name: str | None) -> Any:
    return x if axis_name is None else lax.pmean(x, axis_name)


# (mean, std) per channel on 0..1 pixels: how a step normalizes uint8 batch images.
Pixels = tuple[Sequence[float], Sequence[float]] | None


def model_input(images: jax.Array, pixels: Pixels) -> jax.Array:
    """A batch's images as the models take them: uint8 pixels (a host pipeline's cheap
    transfer) are normalized here, on the device, with `pixels` = (mean, std); float
    images are already normalized and pass through."""
    if images.dtype != jnp.uint8:
        return images
    if pixels is None:
        raise ValueError("uint8 batch images need the step's pixels=(mean, std) to normalize")
    return normalize.normalize(images, *pixels)


# loss_fn(params, extra_params, state, teacher_variables, batch) -> (loss, (metrics, updates)):
# the global-batch loss of the trainable tree, the task's metrics (global-batch scalars) and
# the state fields it renews besides the trained ones (e.g. batch_stats, extra_state).
LossFn = Callable[..., tuple[jax.Array, tuple[Metrics, dict[str, Any]]]]


def make_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    lr_fn: Callable[[jax.Array], jax.Array] | None = None,
) -> Callable[[state_lib.TrainState, Any, dict[str, jax.Array]], tuple[Any, Metrics]]:
    """The one train step of every task: `train_step(state, teacher_variables, batch)`.

    Differentiates `loss_fn` with respect to the student's params and the distiller's
    learnable parts together (`state.trainable`, one optimizer), updates them, renews the
    fields `loss_fn` returns and counts the step.

    Args:
      loss_fn: the task's loss (see `LossFn`), written per shard: it returns the global-batch
        loss (a `pmean` over the data axis under shard_map; see the module docstring).
      tx: the optimizer.
      lr_fn: the learning-rate schedule, logged as metric "lr" (omitted when None).

    Returns:
      A pure function; its metrics are "loss" (on the pre-update parameters), the task's
      metrics, "grad_norm" and "param_norm" (both on the pre-update parameters, extra
      params included) and "lr".
    """

    def train_step(state, teacher_variables, batch):
        def total(tree):
            params, extra_params = state_lib.split_trainable(tree, state)
            return loss_fn(params, extra_params, state, teacher_variables, batch)

        tree = state_lib.trainable(state)
        (loss, (metrics, renewed)), grads = jax.value_and_grad(total, has_aux=True)(tree)
        deltas, opt_state = tx.update(grads, state.opt_state, tree)
        params, extra_params = state_lib.split_trainable(optax.apply_updates(tree, deltas), state)
        metrics = {
            "loss": loss,
            **metrics,
            "grad_norm": optax.global_norm(grads),
            "param_norm": optax.global_norm(tree),
        }
        if lr_fn is not None:
            metrics["lr"] = jnp.asarray(lr_fn(state.step))
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            extra_params=extra_params,
            opt_state=opt_state,
            **renewed,
        )
        return new_state, metrics

    return train_step


def make_train_step(
    student: nn.Module,
    teacher: nn.Module | None,
    distiller: Any,
    tx: optax.GradientTransformation,
    *,
    steps_per_epoch: int,
    axis_name: str | None = None,
    lr_fn: Callable[[jax.Array], jax.Array] | None = None,
    dropout_seed: int = 0,
    pixels: Pixels = None,
) -> Callable[[state_lib.TrainState, Any, dict[str, jax.Array]], tuple[Any, Metrics]]:
    """Builds the classification `train_step(state, teacher_variables, batch)`.

    `make_step` over `distillation_loss`: the student's (and teacher's) forward pass and the
    distiller's loss, then the generic update.

    Args:
      student: the student module; `apply(v, x, train=True, mutable=["batch_stats"])`
        returns `((logits, feats), mutated)`. Build it with `axis_name` equal to the one
        given here so that its BatchNorm statistics are synchronized over the data axis.
      teacher: the teacher module (run with `train=False`), or None when the distiller
        does not use a teacher.
      distiller: a `distillers.base.Distiller`. `uses_teacher` False skips the teacher's
        forward pass; `uses_feats` True passes both models' feats; `teacher_train` True runs
        the teacher's BatchNorm on batch statistics. A distiller with learnable parts
        (state.extra_params / extra_state non-empty) gets `index` (batch["index"] if
        present), `extra={"params", "state"}` and a per-step `rng`; its extra params are
        differentiated and updated with the student's, and `LossOutput.state` becomes the
        new `extra_state`.
      tx: the optimizer.
      steps_per_epoch: optimizer steps per epoch; the 1-based integer epoch passed to
        the distiller is `state.step // steps_per_epoch + 1`, computed on device.
      axis_name: the data axis inside `shard_map`, or None on one device.
      lr_fn: the learning-rate schedule, logged as metric "lr" (omitted when None).
      dropout_seed: the run's seed for the "dropout" rng stream (folded with the step and
        shard) and the distiller's key; a batch entry "seed" (several seeds in one job)
        overrides it.
      pixels: (mean, std) per channel, for batches of uint8 images (`model_input`).

    Returns:
      A pure function. `batch` holds "image" (float NHWC, normalized; or uint8 pixels with
      `pixels`) and "label" (int).
      Metrics (global-batch scalars): "loss" (the total on the pre-update parameters),
      the distiller's parts ("loss_ce", "loss_kd", ...), "top1", "lr", "grad_norm",
      "param_norm" (both on the pre-update parameters, extra params included).
    """
    loss_fn = distillation_loss(
        student,
        teacher,
        distiller,
        steps_per_epoch=steps_per_epoch,
        axis_name=axis_name,
        dropout_seed=dropout_seed,
        pixels=pixels,
    )
    return make_step(loss_fn, tx, lr_fn=lr_fn)


def distillation_loss(
    student: nn.Module,
    teacher: nn.Module | None,
    distiller: Any,
    *,
    steps_per_epoch: int,
    axis_name: str | None = None,
    dropout_seed: int = 0,
    pixels: Pixels = None,
) -> LossFn:
    """The classification task's `LossFn` (the arguments as `make_train_step`'s)."""
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    uses_teacher = distiller.uses_teacher and teacher is not None
    uses_feats, teacher_train = distiller.uses_feats, distiller.teacher_train

    def teacher_forward(teacher_variables, images):
        if teacher_train:  # Batch statistics (OFD); the running statistics are not kept.
            (logits, feats), _ = teacher.apply(
                teacher_variables, images, train=True, mutable=["batch_stats"]
            )
        else:
            logits, feats = teacher.apply(teacher_variables, images, train=False)
        logits = lax.stop_gradient(_loss_dtype(logits))
        return logits, (lax.stop_gradient(feats) if uses_feats else None)

    def loss_fn(params, extra_params, state, teacher_variables, batch):
        images, labels = model_input(batch["image"], pixels), batch["label"]
        epoch = state.step // steps_per_epoch + 1  # traced int: no recompiles across epochs
        # A run's seed: `dropout_seed`, or the run's seed when several seeds train in one
        # job (seed_runs.vmapped_step puts it in the batch): the same keys either way.
        seed = batch.get("seed", dropout_seed)
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        # The distiller's key (e.g. CRD's negatives) is the same on every shard.
        distiller_rng = jax.random.fold_in(jax.random.key(seed + 1), state.step)
        if axis_name is not None:
            rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
        t_logits, t_feats = None, None
        if uses_teacher:  # constants of the loss: outside the gradient's reach
            t_logits, t_feats = teacher_forward(teacher_variables, images)

        variables = {"params": params, "batch_stats": state.batch_stats}
        (s_logits, s_feats), mutated = student.apply(
            variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": rng}
        )
        s_logits = _loss_dtype(s_logits)
        out = distiller(
            s_logits,
            t_logits,
            labels,
            epoch=epoch,
            axis_name=axis_name,
            s_feats=s_feats if uses_feats else None,
            t_feats=t_feats,
            index=batch.get("index"),
            extra={"params": extra_params, "state": state.extra_state},
            rng=distiller_rng,
        )
        top1 = jnp.mean((jnp.argmax(s_logits, axis=-1) == labels).astype(s_logits.dtype))
        metrics = {**_pmean(dict(out.parts), axis_name), "top1": _pmean(top1, axis_name)}
        renewed = {
            "batch_stats": mutated.get("batch_stats", {}),
            "extra_state": state.extra_state if out.state is None else out.state,
        }
        return _pmean(out.total, axis_name), (metrics, renewed)  # the global-batch loss

    return loss_fn


def make_eval_step(
    model: nn.Module, *, axis_name: str | None = None, pixels: Pixels = None
) -> Callable[[Any, dict[str, jax.Array]], Metrics]:
    """Builds `eval_step(variables, batch) -> sums` for masked, padded eval batches.

    Args:
      model: the classifier, run with `train=False`.
      axis_name: the data axis inside `shard_map` (sums are `psum`ed), or None.
      pixels: (mean, std) per channel, for batches of uint8 images (`model_input`).

    Returns:
      A pure function returning global-batch SUMS "correct1", "correct5", "loss_sum"
      (softmax cross-entropy) and "count" over the examples with `batch["mask"] == 1`
      (all examples when the batch has no "mask"). Top-5 becomes top-C when C < 5.
      A model whose feats hold "cohort_logits" (N, B, C) (a cohort of students,
      `models.cohort`) adds "member_correct1" and "member_correct5", (N,) sums per member.
    """

    def eval_step(variables, batch):
        images, labels = model_input(batch["image"], pixels), batch["label"]
        logits, feats = model.apply(variables, images, train=False)
        logits = _loss_dtype(logits)  # (B, C)
        mask = batch.get("mask")
        mask = jnp.ones(labels.shape, logits.dtype) if mask is None else mask.astype(logits.dtype)
        k = min(5, logits.shape[-1])
        _, top_k = lax.top_k(logits, k)  # (B, k)
        correct1 = top_k[:, 0] == labels
        correct5 = jnp.any(top_k == labels[:, None], axis=-1)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        sums = {
            "correct1": jnp.sum(correct1 * mask),
            "correct5": jnp.sum(correct5 * mask),
            "loss_sum": jnp.sum(jnp.where(mask > 0, loss, 0.0) * mask),
            "count": jnp.sum(mask),
        }
        if isinstance(feats, dict) and "cohort_logits" in feats:
            _, member_top_k = lax.top_k(_loss_dtype(feats["cohort_logits"]), k)  # (N, B, k)
            hits = member_top_k == labels[None, :, None]
            sums["member_correct1"] = jnp.sum(hits[..., 0] * mask, axis=-1)
            sums["member_correct5"] = jnp.sum(jnp.any(hits, axis=-1) * mask, axis=-1)
        return sums if axis_name is None else lax.psum(sums, axis_name)

    return eval_step
