"""Several independent runs (one per seed) trained together in one job: a task wrapper.

`config.seeds = "0,1,2"` trains one student per seed inside one compiled step:
`for_seeds(task, seeds, mesh)` turns a task into one whose state is the runs' states
stacked along a leading "run" axis, whose per-shard train step is the task's step
`jax.vmap`ped over it, and whose batches stack one batch per seed. The runs share each
device, the teacher's variables (loaded once) and the data-parallel mesh, while each keeps
its own initialization, data order, augmentation and dropout keys. Run k is the one that
`config.seed = k` would train: the trainer writes it to `W/seed{k}/` (checkpoints, metrics,
summary) exactly as that run writes `W/`.

Batches of the runs are stacked as (S, B, ...) and split over "data" along axis 1.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from luminet_jax import sharding

DATA_AXIS = sharding.DATA_AXIS
RUNS_BATCH = P(None, DATA_AXIS)  # (S, B, ...): runs replicated, batch split


def parse_seeds(text: str) -> list[int]:
    """ "0,1,2" -> [0, 1, 2]; "" -> [] (one ordinary run with `config.seed`).

    Raises:
      ValueError: a seed that is not a non-negative integer, or a seed given twice.
    """
    seeds = []
    for part in str(text or "").split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise ValueError(f"config.seeds: {part!r} is not a non-negative integer seed")
        seeds.append(int(part))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(
            f"config.seeds={text!r} repeats seed(s) {repeated}: each run must be an "
            "independent run (its own workdir seed{k}/)."
        )
    return seeds


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """Where one run of a job writes, how its log lines start and what its summary adds."""

    workdir: str
    tag: str = ""  # "seed 3 " before its log lines
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)  # {"seed": 3}


def run_infos(workdir: str, seeds: Sequence[int]) -> list[RunInfo]:
    """One `RunInfo` per seed (`workdir/seed{k}`), or the single run in `workdir`."""
    if not seeds:
        return [RunInfo(workdir)]
    return [RunInfo(os.path.join(workdir, f"seed{k}"), f"seed {k} ", {"seed": k}) for k in seeds]


def describe(seeds: Sequence[int]) -> str:
    """For the start-up log line: ", 3 seeds [0, 1, 2] in one job" ("" for one run)."""
    return f", {len(seeds)} seeds {list(seeds)} in one job" if seeds else ""


def result(summaries: list[dict[str, Any]], state: Any, seeds: Sequence[int]) -> dict:
    """train_and_evaluate's return value: the summary and the state of a run, or of a job
    the summaries' values as lists, "seeds", "runs" (one summary each) and the stacked
    state."""
    if not seeds:
        return {**summaries[0], "state": state}
    keys = [k for k in summaries[0] if k != "seed"]
    combined = {k: [s[k] for s in summaries] for k in keys}
    return {**combined, "seeds": list(seeds), "runs": summaries, "state": state}


def run_slice(tree: Any, k: int) -> Any:
    """Run k's slice of a stacked tree."""
    return jax.tree.map(lambda x: x[k], tree)


def stack(trees: Sequence[Any], mesh: Mesh) -> Any:
    """Stacks per-run trees along a new leading axis, replicated on the mesh."""
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
    return jax.device_put(stacked, sharding.replicated(mesh))


def runs_batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, RUNS_BATCH)


def to_global(local_batches: Sequence[dict[str, Any]], mesh: Mesh) -> dict[str, jax.Array]:
    """Stacks each run's process-local batch into (S, B, ...) global arrays."""
    local = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *local_batches)
    target = runs_batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(target, jax.device_get(x)), local
    )


def vmapped_step(train_step: Callable, seeds: Sequence[int]) -> Callable:
    """The per-shard `train_step` over stacked states and (S, B, ...) batches.

    Each run's batch gets its seed as `batch["seed"]`, from which the step draws its
    dropout and distiller keys (as a separate run's step does from its `config.seed`).
    """
    seed_array = jnp.asarray(seeds, jnp.int32)

    def step(state, teacher_variables, batch):
        def one(run_state, run_batch, seed):
            return train_step(run_state, teacher_variables, {**run_batch, "seed": seed})

        return jax.vmap(one)(state, batch, seed_array)

    return step


def shard_train_step(train_step: Callable, mesh: Mesh, seeds: Sequence[int]) -> Callable:
    """Jits the per-shard `train_step` vmapped over the runs (`vmapped_step`).

    Returns:
      `fn(state, teacher_variables, batch) -> (state, metrics)` on stacked states and
      (S, B, ...) batches; metrics are (S,) arrays.
    """
    return sharding.shard_train_step(vmapped_step(train_step, seeds), mesh, RUNS_BATCH)


def for_seeds(task: Any, seeds: Sequence[int], mesh: Mesh) -> Any:
    """The task of several runs, one per seed, trained in one job (the task itself without
    seeds). `task` is a `tasks.Task`; its fields are replaced, the type is kept. Its
    `evaluate` and `prepare_state` act on one run's state, a view of `runs(state)`."""
    if not seeds:
        return task
    seeds = tuple(seeds)
    stacker = jax.jit(lambda *xs: jnp.stack(xs), out_shardings=runs_batch_sharding(mesh))

    def train_batches(start_step, seeds):
        runs = [task.train_batches(start_step, seed) for seed in seeds]
        return lambda step: jax.tree.map(stacker, *[run(step) for run in runs])

    return dataclasses.replace(
        task,
        seed=seeds,
        init=jax.vmap(task.init, in_axes=(0, None)),
        train_batches=train_batches,
        train_step=vmapped_step(task.train_step, seeds),
        batch_spec=RUNS_BATCH,
        runs=lambda tree: [run_slice(tree, k) for k in range(len(seeds))],
        join=lambda trees: stack(trees, mesh),
    )
