"""Tasks: what a kind of training (classification, detection) hands the one loop in train.py.

`config.task` names the task ("classification" when absent, so every classification config
works unchanged). A task module's `build(config, *, mesh, seeds) -> Task` reads its config
sections (it is train.py's config-reading half for that task: the library functions it calls
take plain arguments) and returns the models' initialization, the data, the train step and
the evaluation as plain callables. `train.train_and_evaluate` then runs the same loop for
every task: logging, checkpoints, evaluation, resume, interrupts and seeds-in-one-job. No
method or task name is looked at inside the loop.

Task modules are imported lazily (detection pulls in pycocotools, classification tf.data).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

DEFAULT_TASK = "classification"
# task name -> the module whose `build` and `check_names` define it.
TASKS = {
    "classification": "luminet_jax.classification",
    "detection": "luminet_jax.detection.task",
}


@dataclasses.dataclass(frozen=True)
class Task:
    """One run's task, as the loop sees it (every array on the "data" mesh).

    Attributes:
      metric: the primary eval metric, a key of `evaluate`'s dicts ("top1", "AP"); the
        summary's best_/last_/teacher_ entries and the best-so-far tracking use it.
      steps_per_epoch: optimizer steps per epoch of the training set.
      init: `init(seed, teacher_variables) -> TrainState`, jittable (vmapped over seeds).
      teacher_variables: the frozen teacher's variables, replicated (None without one).
      train_batches: `train_batches(start_step) -> (step -> global batch)`, resumable.
      train_step: `train_step(state, teacher_variables, batch) -> (state, metrics)`, per
        shard over the "data" axis (the loop shards and jits it).
      evaluate: `evaluate(state) -> metrics` over the eval split, metrics a dict of floats
        (written as eval/<key>), or one such dict per member with seeds.
      evaluate_teacher: `() -> metrics` of the teacher (None: no teacher, or not evaluated).
      prepare_state: a host-side hook on each member's initial state, before any resume
        (a distiller's `data_state`, e.g. CRD's labels of every sample; a detector's
        ImageNet backbone); None when unused.
      train_metric: the training metric shown beside the loss in the progress line.
      describe: the model(s), for the start-up log line.
      teacher_name: for the log.
    """

    metric: str
    steps_per_epoch: int
    init: Callable[[Any, Any], Any]
    teacher_variables: Any
    train_batches: Callable[[int], Callable[[int], Any]]
    train_step: Callable[..., Any]
    evaluate: Callable[[Any], Any]
    evaluate_teacher: Callable[[], dict[str, float]] | None = None
    prepare_state: Callable[[Any], Any] | None = None
    train_metric: str = "top1"
    describe: str = ""
    teacher_name: str = ""


def task_name(config: Any) -> str:
    """The config's task (`config.task`, default "classification"); raises on unknown names."""
    name = config.get("task", DEFAULT_TASK) or DEFAULT_TASK
    if name not in TASKS:
        raise ValueError(f"Unknown config.task {name!r}; known tasks: {sorted(TASKS)}")
    return name


def task_module(config: Any):
    """The module implementing the config's task (imported on first use)."""
    return importlib.import_module(TASKS[task_name(config)])


def build(config: Any, *, mesh: Any, seeds: list[int]) -> Task:
    """Builds the config's task: `<task module>.build(config, mesh=mesh, seeds=seeds)`."""
    return task_module(config).build(config, mesh=mesh, seeds=seeds)


def _check_classifiers(config: Any) -> None:
    from luminet_jax import distillers, models  # noqa: PLC0415

    distiller = distillers.get_distiller(**config.distiller)
    models.canonical_name(config.student.name)
    if distiller.uses_teacher:
        for name in filter(None, config.teacher.name.split(",")):
            models.canonical_name(name.strip())


def _check_detectors(config: Any) -> None:
    from luminet_jax import distillers  # noqa: PLC0415
    from luminet_jax.detection import rcnn  # noqa: PLC0415

    distiller = distillers.get_distiller(**config.distiller)
    for name in [config.student.name] + ([config.teacher.name] if distiller.uses_teacher else []):
        if name not in rcnn.DETECTORS:
            raise KeyError(f"Unknown detector {name!r}; known: {sorted(rcnn.DETECTORS)}")


_CHECKS = {"classification": _check_classifiers, "detection": _check_detectors}


def check_names(config: Any) -> None:
    """Checks the config's model and distiller names cheaply (no data, orbax or TF imports).

    Raises:
      ValueError: an unknown task.
      KeyError: an unknown model or distiller name (the message lists the known ones).
    """
    _CHECKS[task_name(config)](config)


def teacher_hint(config: Any, *, prog: str) -> str | None:
    """How to get a teacher for the config's task, where it differs from classification's."""
    if task_name(config) != "detection":
        return None
    return (
        f"give a detection teacher run's workdir ({prog} --config coco_frcnn_teacher "
        "--workdir T), an orbax directory of its variables (luminet_jax.detection.convert) or "
        "a detectron2 model zoo .pkl / .pth."
    )


def make_optimizer(config: Any, steps_per_epoch: int) -> tuple[Any, Callable[[Any], Any]]:
    """The run's (optax tx, lr schedule) from config.optim and config.schedule."""
    from luminet_jax import optim  # noqa: PLC0415

    lr_fn = optim.make_schedule(**config.schedule, steps_per_epoch=steps_per_epoch)
    return optim.make_optimizer(learning_rate=lr_fn, **config.optim), lr_fn
