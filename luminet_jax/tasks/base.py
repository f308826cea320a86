"""What every task hands the loop (`Task`), and the config pieces all tasks read alike."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from luminet_jax import optim, sharding


@dataclasses.dataclass(frozen=True)
class Task:
    """One run's task, as the loop sees it (every array on the "data" mesh).

    Attributes:
      metric: the primary eval metric, a key of `evaluate`'s dicts ("top1", "AP"); the
        summary's best_/last_/teacher_ entries and the best-so-far tracking use it.
      steps_per_epoch: optimizer steps per epoch of the training set.
      seed: the run's seed, passed back to `init` and `train_batches` (with several seeds
        in one job, `seed_runs.for_seeds`: the tuple of the runs' seeds).
      init: `init(seed, teacher_variables) -> TrainState`, jittable.
      teacher_variables: the frozen teacher's variables, replicated (None without one).
      train_batches: `train_batches(start_step, seed) -> (step -> global batch)`, resumable.
      train_step: `train_step(state, teacher_variables, batch) -> (state, metrics)`, per
        shard over the "data" axis (the loop shards and jits it; `batch_spec` splits it).
      evaluate: `evaluate(run_state) -> metrics` of one run (a view of `runs(state)`) over
        the eval split, a dict of floats (written as eval/<key>).
      evaluate_teacher: `() -> metrics` of the teacher (None: no teacher, or not evaluated).
      prepare_state: a host-side hook on one run's initial state, before any resume (a
        distiller's `data_state`, e.g. CRD's labels of every sample; a detector's ImageNet
        backbone); None when unused.
      train_metric: the training metric shown beside the loss in the progress line.
      describe: the model(s), for the start-up log line.
      teacher_name: for the log.
      batch_spec: how a global batch is split over the mesh.
      runs: the runs the state holds, as views: `runs(tree) -> [tree of run k]` for a
        state or a metrics tree, and `join([trees]) -> tree`, its inverse (one run: the
        tree itself).
    """

    metric: str
    steps_per_epoch: int
    seed: Any
    init: Callable[[Any, Any], Any]
    teacher_variables: Any
    train_batches: Callable[[int, Any], Callable[[int], Any]]
    train_step: Callable[..., Any]
    evaluate: Callable[[Any], dict[str, float]]
    evaluate_teacher: Callable[[], dict[str, float]] | None = None
    prepare_state: Callable[[Any], Any] | None = None
    train_metric: str = "top1"
    describe: str = ""
    teacher_name: str = ""
    batch_spec: P = sharding.BATCH
    runs: Callable[[Any], list[Any]] = lambda tree: [tree]
    join: Callable[[list[Any]], Any] = lambda trees: trees[0]


def compute_dtype(setting: str, platform: str | None = None) -> Any:
    """The models' compute dtype of config.compute_dtype: None (the inputs' dtype, float32)
    for "", bfloat16 on GPU and TPU (`platform`, default JAX's backend) and None on CPU for
    "auto", else the named dtype. Parameters, optimizer and losses stay float32."""
    if setting == "auto":
        platform = platform or jax.default_backend()
        return jnp.dtype(jnp.bfloat16) if platform in ("gpu", "cuda", "rocm", "tpu") else None
    return jnp.dtype(setting) if setting else None


def make_optimizer(config: Any, steps_per_epoch: int) -> tuple[Any, Callable[[Any], Any]]:
    """The run's (optax tx, lr schedule) from config.optim and config.schedule."""
    lr_fn = optim.make_schedule(**config.schedule, steps_per_epoch=steps_per_epoch)
    return optim.make_optimizer(learning_rate=lr_fn, **config.optim), lr_fn


def split_names(text: str) -> list[str]:
    """Splits a comma-separated config string ("" -> [])."""
    return [part.strip() for part in str(text or "").split(",") if part.strip()]


def missing_teacher(config: Any) -> ValueError:
    """The error for a distiller that needs a teacher when config.teacher.checkpoint is empty."""
    return ValueError(
        f"{config.distiller.name} needs a teacher, but config.teacher.checkpoint is empty "
        "(set --config.teacher.checkpoint=PATH)."
    )
