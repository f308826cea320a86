"""Tasks: what a kind of training (classification, detection) hands the one loop in train.py.

`config.task` names the task ("classification" when absent, so every classification config
works unchanged). Each task is one module of this package with

    build(config, *, mesh) -> Task      # reads its config sections; the library functions
                                        # it calls take plain arguments
    check_names(config)                 # its model and distiller names, cheaply
    teacher_hint(config, *, prog)       # how to get a teacher for it

and one entry in `TASKS`. `train.train_and_evaluate` runs the same loop for every task:
logging, checkpoints, evaluation, resume, interrupts and seeds-in-one-job. No method or
task name is looked at inside the loop.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from luminet_jax.tasks import base, classification, detection

Task = base.Task
DEFAULT_TASK = "classification"
TASKS: dict[str, ModuleType] = {"classification": classification, "detection": detection}


def task_name(config: Any) -> str:
    """The config's task (`config.task`, default "classification"); raises on unknown names."""
    name = config.get("task", DEFAULT_TASK) or DEFAULT_TASK
    if name not in TASKS:
        raise ValueError(f"Unknown config.task {name!r}; known tasks: {sorted(TASKS)}")
    return name


def task_module(config: Any) -> ModuleType:
    """The module implementing the config's task."""
    return TASKS[task_name(config)]


def build(config: Any, *, mesh: Any) -> Task:
    """Builds the config's task: `<task module>.build(config, mesh=mesh)`."""
    return task_module(config).build(config, mesh=mesh)


def check_names(config: Any) -> None:
    """Checks the config's model and distiller names cheaply (no data, orbax or TF imports).

    Raises:
      ValueError: an unknown task.
      KeyError: an unknown model or distiller name (the message lists the known ones).
    """
    task_module(config).check_names(config)


def teacher_hint(config: Any, *, prog: str) -> str:
    """How to get a teacher checkpoint for the config's task."""
    return task_module(config).teacher_hint(config, prog=prog)
