"""The training loop: the one place that loops, logs, saves and evaluates.

`train_and_evaluate(config, workdir)` builds the mesh and the config's task (`config.task`:
classification by default, or detection; `luminet_jax.tasks`), which supplies the models'
initialization, the data, the train step and the evaluation; with `config.seeds` the task
holds one run per seed (`seed_runs.for_seeds`). The loop is the same for every task: it
resumes from `workdir` if it holds a checkpoint, trains, logs, evaluates (tracking the
task's primary metric, e.g. top1 or AP), checkpoints and handles interrupts, writing each
run's outputs through its own `_Run` sink. Everything below it is a pure library function
that takes plain arguments (see luminet_jax/config_lib.py for the config's sections).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from luminet_jax import checkpoint, fast_conv, interrupt, metrics_io, seed_runs, sharding, tasks


def _summarize(first_step: int, window: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Means of a window of host metrics; raises at the first step with a non-finite value."""
    for offset, metrics in enumerate(window):
        bad = {k: float(v) for k, v in metrics.items() if not np.all(np.isfinite(v))}
        if bad:
            raise FloatingPointError(
                f"Non-finite training metrics {bad} at step {first_step + offset} "
                f"(the update from state.step={first_step + offset}). Training stopped; the "
                "state was not saved, so the workdir keeps the last good checkpoint."
            )
    return {k: float(np.mean([m[k] for m in window])) for k in window[0]}


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def _progress(
    step: int, total: int, spe: int, means: dict, shown: str, images_per_s: float, eta_s: float
) -> str:
    """The progress line: step, epoch, loss, the task's training metric, lr, speed, ETA."""
    return (
        f"step {step}/{total} (epoch {step / spe:.2f}) loss {means['loss']:.4f} {shown} "
        f"{means.get(shown, math.nan):.3f} lr {means.get('lr', math.nan):.4g} | "
        f"{images_per_s:.1f} img/s | ETA {_format_eta(eta_s)}"
    )


class _Run:
    """One run's outputs: metrics (jsonl, TensorBoard), checkpoints, best-so-far, summary."""

    def __init__(self, info: seed_runs.RunInfo, *, metric: str, keep: int):
        self.info, self.metric = info, metric
        self.ckpt = checkpoint.Checkpointer(info.workdir, max_to_keep=keep)
        self.writer: metrics_io.MetricWriter | None = None
        self.summary: dict[str, Any] = {f"teacher_{metric}": math.nan}
        self.best, self.last, self.last_eval_step = -math.inf, math.nan, -1

    def open(self, start_step: int) -> None:
        """Starts writing; the best eval so far survives a resume through metrics.jsonl."""
        self.writer = metrics_io.MetricWriter(self.info.workdir)
        key = f"eval/{self.metric}"
        earlier = [r for r in metrics_io.read_metrics(self.info.workdir) if r["step"] <= start_step]
        best, self.last = metrics_io.best_and_last(earlier, key=key)
        self.best = -math.inf if math.isnan(best) else best
        self.last_eval_step = max((r["step"] for r in earlier if key in r), default=-1)

    def teacher(self, step: int, value: float) -> None:
        self.summary[f"teacher_{self.metric}"] = float(value)
        self.writer.write(step, {f"teacher_{self.metric}": value})

    def train(self, step: int, means: dict[str, float], progress: str) -> None:
        self.writer.write(step, {f"train/{n}": v for n, v in means.items()})
        logging.info("%s%s", self.info.tag, progress)

    def eval(self, step: int, metrics: dict[str, float], epoch: float) -> None:
        value = metrics[self.metric]
        self.best, self.last, self.last_eval_step = max(self.best, value), value, step
        record = {f"eval/{n}": v for n, v in metrics.items()}
        self.writer.write(step, {"epoch": epoch, **record, f"eval/best_{self.metric}": self.best})
        shown = " ".join(f"{n} {v:.4f}" for n, v in metrics.items() if not n.startswith("member"))
        logging.info(
            "%sstep %d eval: %s (best %s %.4f)", self.info.tag, step, shown, self.metric, self.best
        )

    def finish(self, step: int, **fields: Any) -> dict[str, Any]:
        best, last = f"best_{self.metric}", f"last_{self.metric}"
        self.summary.update({best: float(self.best), last: float(self.last)}, steps=step, **fields)
        self.summary.update(self.info.summary)
        self.writer.write(step, {f"summary/{n}": v for n, v in self.summary.items()})
        return self.summary

    def close(self) -> None:
        self.ckpt.wait()
        if self.writer is not None:
            self.writer.close()
        if jax.process_index() == 0 and "steps" in self.summary:
            with open(os.path.join(self.info.workdir, "summary.json"), "w") as f:
                json.dump(self.summary, f, indent=1)


def _start(task: tasks.Task, seeds: list[int], workdir: str, mesh, *, keep: int, total: int):
    """(initial state, the runs' sinks, start step): fresh, or resumed from the runs' latest
    checkpoints (which must be at one step); the sinks open and get the teacher's metric."""
    replicated = sharding.replicated(mesh)
    init = jax.jit(task.init, out_shardings=replicated)
    state = init(jnp.asarray(task.seed, jnp.uint32), task.teacher_variables)
    if task.prepare_state is not None:
        state = task.join([task.prepare_state(s) for s in task.runs(state)])
    infos = seed_runs.run_infos(workdir, seeds)
    runs = [_Run(info, metric=task.metric, keep=keep) for info in infos]
    restored = [run.ckpt.restore_or(s) for run, s in zip(runs, task.runs(state))]
    starts = sorted({int(jax.device_get(r.step)) for r in restored})
    if len(starts) > 1:
        raise ValueError(
            f"The checkpoints of {[i.workdir for i in infos]} are at different steps {starts}; "
            "remove the newer ones' latest checkpoints (or all) to resume them together."
        )
    state, step = jax.device_put(task.join(restored), replicated), starts[0]
    first = task.runs(state)[0]
    logging.info(
        "%s (%d params, %d extra from the distiller)%s; %d steps/epoch, %d total, starting at %d.",
        task.describe,
        sum(x.size for x in jax.tree.leaves(first.params)),
        sum(x.size for x in jax.tree.leaves(first.extra_params)),
        seed_runs.describe(seeds),
        task.steps_per_epoch,
        total,
        step,
    )
    for run in runs:
        run.open(step)
    if task.evaluate_teacher is not None:
        value = task.evaluate_teacher()[task.metric]
        for run in runs:
            run.teacher(step, value)
        logging.info("Teacher %s %s %.4f", task.teacher_name, task.metric, value)
    return state, runs, step


def _save(runs: list[_Run], task: tasks.Task, state: Any, step: int, *, missing: bool = False):
    """Checkpoints every run at `step` (with `missing`: only those without one there)."""
    for run, run_state in zip(runs, task.runs(state)):
        if not (missing and run.ckpt.latest_step() == step):
            run.ckpt.save(step, run_state)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains and evaluates the model of `config` (configs/*.py; `config.task` picks the
    task) in `workdir` (`ckpt/`, `metrics.jsonl`, TensorBoard files, `summary.json`),
    resuming from a checkpoint there. `config.seeds = "0,1,2"` trains one student per seed
    in one compiled step, each in `workdir/seed{k}/` as a run with `config.seed = k`.

    Returns:
      The summary ("best_M", "last_M", "teacher_M" for the task's primary metric M: top1
      or AP; "steps", "steps_per_epoch", "wall_s") and "state", the final `TrainState`
      (with seeds: lists, "runs" (a summary per seed), "seeds" and the stacked state).

    Raises:
      ValueError: an unknown task, a batch size that does not divide over the devices, a
        missing or mismatched teacher checkpoint, repeated seeds (or seeds for detection).
      FloatingPointError: a non-finite loss (or gradient norm), naming the step.
    """
    start_time = time.monotonic()
    mesh = sharding.make_mesh()
    sharding.check_global_batch(config.batch_size, mesh)
    sharding.check_global_batch(config.eval_batch_size, mesh)
    seeds = seed_runs.parse_seeds(config.get("seeds", ""))
    task = seed_runs.for_seeds(tasks.build(config, mesh=mesh), seeds, mesh)
    spe = task.steps_per_epoch
    total = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * spe
    eval_every = config.eval_every_steps or config.eval_every_epochs * spe
    state, runs, step = _start(
        task, seeds, workdir, mesh, keep=config.keep_checkpoints, total=total
    )
    next_batch = task.train_batches(step, task.seed)
    # Opt-in CPU speed-up: convolution weight gradients as matmuls (numerically the same).
    fast = fast_conv.wrap(task.train_step, bool(config.fast_conv), config.fast_conv or "pointwise")
    train_step = sharding.shard_train_step(fast, mesh, task.batch_spec)

    def run_eval(at: int) -> None:
        for run, run_state in zip(runs, task.runs(state)):
            run.eval(at, task.evaluate(run_state), epoch=at / spe)

    pending: list[dict[str, jax.Array]] = []  # device metrics since the last flush
    window_time, window_step = time.monotonic(), step
    with interrupt.StopRequest() as stop:
        try:
            while step < total:
                state, metrics = train_step(state, task.teacher_variables, next_batch(step))
                pending.append(metrics)
                step += 1
                at_log = step % config.log_every_steps == 0 or step == total
                at_ckpt = step % config.ckpt_every_steps == 0 or step == total
                at_eval = step % eval_every == 0 or step == total
                stopping = stop.requested(sync=at_log)
                if not (at_log or at_ckpt or at_eval or stopping):
                    continue
                # One host transfer per window; checked before anything is saved.
                window, pending = jax.device_get(pending), []
                now = time.monotonic()
                rate = (step - window_step) / max(now - window_time, 1e-9)
                window_time, window_step = now, step
                speed, eta = rate * config.batch_size * len(runs), (total - step) / rate
                for run, run_window in zip(runs, zip(*[task.runs(m) for m in window])):
                    means = _summarize(step - len(window), list(run_window))
                    line = _progress(step, total, spe, means, task.train_metric, speed, eta)
                    run.train(step, means, line)
                if at_eval:
                    run_eval(step)
                if at_ckpt or stopping:
                    _save(runs, task, state, step)
                if stopping:
                    logging.warning("Interrupted: saved a checkpoint at step %d.", step)
                    raise stop.exception()
            if min(run.last_eval_step for run in runs) != step:  # e.g. resuming a finished run
                run_eval(step)
            _save(runs, task, state, step, missing=True)
            wall_s = time.monotonic() - start_time
            summaries = [run.finish(step, steps_per_epoch=spe, wall_s=wall_s) for run in runs]
        finally:
            for run in runs:
                run.close()
    logging.info("Done: %s", summaries if len(summaries) > 1 else summaries[0])
    return seed_runs.result(summaries, state, seeds)
