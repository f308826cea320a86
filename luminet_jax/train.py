"""The training loop: the one place that loops, logs, saves and evaluates.

`train_and_evaluate(config, workdir)` builds the mesh and the config's task (`config.task`:
classification by default, or detection; `luminet_jax.tasks`), which supplies the models'
initialization, the data, the train step and the evaluation. The loop is the same for every
task: it resumes from `workdir` if it holds a checkpoint, trains, logs, evaluates (tracking
the task's primary metric, e.g. top1 or AP), checkpoints and handles interrupts and several
seeds in one job. Everything below it is a pure library function that takes plain
arguments (see luminet_jax/config_lib.py for the config's sections).
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

from luminet_jax import (
    checkpoint,
    fast_conv,
    interrupt,
    members,
    metrics_io,
    sharding,
    tasks,
)

AXIS = sharding.DATA_AXIS


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains and evaluates the model described by `config`, in `workdir`.

    With `config.seeds = "0,1,2"` it trains one independent student per seed in the same
    compiled step (`luminet_jax.members`), each written to `workdir/seed{k}/` exactly as a
    run with `config.seed = k` writes `workdir/`.

    Args:
      config: a config as built by `configs/*.py` (see luminet_jax/config_lib.py);
        `config.task` picks the task (default "classification"; `luminet_jax.tasks`).
      workdir: where checkpoints (`ckpt/`), `metrics.jsonl`, TensorBoard files and
        `summary.json` go. A checkpoint already there is resumed from.

    Returns:
      The summary ("best_M", "last_M", "teacher_M" for the task's primary metric M: top1
      for classification, AP for detection; "steps", "steps_per_epoch", "wall_s") plus
      "state", the final `TrainState`; with seeds, "members" (one summary per seed, in
      order) and "state" stacked along a leading members axis.

    Raises:
      ValueError: an unknown task, a batch size that does not divide over the devices, a
        missing teacher checkpoint, a teacher checkpoint that does not match the teacher
        model, seeds that repeat (or seeds for a task without them).
      FloatingPointError: a non-finite loss (or gradient norm), naming the step.
    """
    start_time = time.time()
    seeds = members.parse_seeds(config.get("seeds", ""))
    mesh = sharding.make_mesh()
    sharding.check_global_batch(config.batch_size, mesh)
    sharding.check_global_batch(config.eval_batch_size, mesh)
    task = tasks.build(config, mesh=mesh, seeds=seeds)
    metric, steps_per_epoch, teacher_vars = (
        task.metric,
        task.steps_per_epoch,
        task.teacher_variables,
    )
    total_steps = (
        config.num_train_steps
        if config.num_train_steps > 0
        else config.num_epochs * steps_per_epoch
    )
    eval_every = config.eval_every_steps or config.eval_every_epochs * steps_per_epoch

    # One member per seed (stacked states), or the single run of config.seed.
    member_seeds = seeds or [config.seed]
    workdirs = [os.path.join(workdir, f"seed{k}") for k in seeds] or [workdir]
    init_fn = jax.vmap(task.init, in_axes=(0, None)) if seeds else task.init
    state = jax.jit(init_fn, out_shardings=sharding.replicated(mesh))(
        jnp.asarray(member_seeds if seeds else config.seed, jnp.uint32), teacher_vars
    )
    view = (lambda tree, k: members.member(tree, k)) if seeds else (lambda tree, k: tree)
    if task.prepare_state is not None:
        prepared = [task.prepare_state(view(state, k)) for k in range(len(member_seeds))]
        rep = sharding.replicated(mesh)
        state = members.stack(prepared, mesh) if seeds else jax.device_put(prepared[0], rep)
    ckpts = [checkpoint.Checkpointer(w, max_to_keep=config.keep_checkpoints) for w in workdirs]
    restored = [c.restore_or(view(state, k)) for k, c in enumerate(ckpts)]
    starts = sorted({int(jax.device_get(r.step)) for r in restored})
    if len(starts) > 1:
        raise ValueError(
            f"The members' checkpoints in {workdir}/seed*/ are at different steps {starts}; "
            "remove the newer ones' latest checkpoints (or all) to resume them together."
        )
    state = members.stack(restored, mesh) if seeds else restored[0]
    start_step = starts[0]
    logging.info(
        "%s (%d params, %d extra from the distiller)%s; %d steps/epoch, %d total, starting at %d.",
        task.describe,
        sum(x.size for x in jax.tree.leaves(view(state, 0).params)),
        sum(x.size for x in jax.tree.leaves(view(state, 0).extra_params)),
        f", {len(seeds)} seeds {seeds} in one job" if seeds else "",
        steps_per_epoch,
        total_steps,
        start_step,
    )

    next_batch = task.train_batches(start_step)
    # Opt-in CPU speed-up: convolution weight gradients as matmuls (numerically the same).
    step_fn = fast_conv.wrap(
        task.train_step, bool(config.fast_conv), config.fast_conv or "pointwise"
    )
    if seeds:
        train_step = members.shard_train_step(step_fn, mesh, seeds)
    else:
        train_step = sharding.shard_train_step(step_fn, mesh)

    writers = [metrics_io.MetricWriter(w) for w in workdirs]
    summaries: list[dict[str, Any]] = [{f"teacher_{metric}": math.nan} for _ in workdirs]
    if task.evaluate_teacher is not None:
        t_metrics = task.evaluate_teacher()
        for summary, writer in zip(summaries, writers):
            summary[f"teacher_{metric}"] = float(t_metrics[metric])
            writer.write(start_step, {f"teacher_{metric}": t_metrics[metric]})
        logging.info("Teacher %s %s %.4f", task.teacher_name, metric, t_metrics[metric])

    # The best eval so far survives a resume through metrics.jsonl.
    best, last, last_eval_step = [], [], []
    for w in workdirs:
        earlier = [r for r in metrics_io.read_metrics(w) if r["step"] <= start_step]
        best_k, last_k = metrics_io.best_and_last(earlier, key=f"eval/{metric}")
        best.append(-math.inf if math.isnan(best_k) else best_k)
        last.append(last_k)
        last_eval_step.append(max((r["step"] for r in earlier if f"eval/{metric}" in r),
                                  default=-1))  # fmt: skip
    tag = (lambda k: f"seed {member_seeds[k]} ") if seeds else (lambda k: "")

    def run_eval(step: int) -> None:
        results = task.evaluate(state)
        for k, m in enumerate(results if seeds else [results]):
            best[k], last[k] = max(best[k], m[metric]), m[metric]
            last_eval_step[k] = step
            writers[k].write(
                step,
                {
                    "epoch": step / steps_per_epoch,
                    **{f"eval/{n}": v for n, v in m.items()},
                    f"eval/best_{metric}": best[k],
                },
            )
            shown = " ".join(f"{n} {v:.4f}" for n, v in m.items() if not n.startswith("member"))
            logging.info("%sstep %d eval: %s (best %s %.4f)", tag(k), step, shown, metric, best[k])

    def save(step: int) -> None:
        for k, c in enumerate(ckpts):
            c.save(step, view(state, k))

    pending: list[dict[str, jax.Array]] = []  # device metrics since the last flush
    window_time, window_step = time.time(), start_step
    step = start_step
    with interrupt.StopRequest() as stop:
        try:
            while step < total_steps:
                state, metrics = train_step(state, teacher_vars, next_batch(step))
                pending.append(metrics)
                step += 1
                at_log = step % config.log_every_steps == 0 or step == total_steps
                at_ckpt = step % config.ckpt_every_steps == 0 or step == total_steps
                at_eval = step % eval_every == 0 or step == total_steps
                stopping = stop.requested(sync=at_log)
                if not (at_log or at_ckpt or at_eval or stopping):
                    continue
                # One host transfer per window; checked before anything is saved.
                window = jax.device_get(pending)
                pending = []
                now = time.time()
                rate = (step - window_step) / max(now - window_time, 1e-9)
                window_time, window_step = now, step
                for k, writer in enumerate(writers):
                    means = _summarize(step - len(window), [view(m, k) for m in window])
                    writer.write(step, {f"train/{n}": v for n, v in means.items()})
                    logging.info(
                        "%sstep %d/%d (epoch %.2f) loss %.4f %s %.3f lr %.4g | %.1f img/s | "
                        "ETA %s",
                        tag(k), step, total_steps, step / steps_per_epoch, means["loss"],
                        task.train_metric, means.get(task.train_metric, math.nan),
                        means.get("lr", math.nan), rate * config.batch_size * len(workdirs),
                        _format_eta((total_steps - step) / rate),
                    )  # fmt: skip
                if at_eval:
                    run_eval(step)
                if at_ckpt or stopping:
                    save(step)
                if stopping:
                    logging.warning("Interrupted: saved a checkpoint at step %d.", step)
                    raise stop.exception()
            if min(last_eval_step) != step:  # e.g. resuming a run that had finished
                run_eval(step)
            if any(c.latest_step() != step for c in ckpts):
                save(step)
            for k, (summary, writer) in enumerate(zip(summaries, writers)):
                summary.update(
                    {f"best_{metric}": float(best[k]), f"last_{metric}": float(last[k])},
                    steps=step,
                    steps_per_epoch=steps_per_epoch,
                    wall_s=time.time() - start_time,
                )
                if seeds:
                    summary["seed"] = member_seeds[k]
                writer.write(step, {f"summary/{n}": v for n, v in summary.items()})
        finally:
            for c in ckpts:
                c.wait()
            for writer in writers:
                writer.close()
    if jax.process_index() == 0:
        for w, summary in zip(workdirs, summaries):
            with open(os.path.join(w, "summary.json"), "w") as f:
                json.dump(summary, f, indent=1)
    logging.info("Done: %s", summaries if seeds else summaries[0])
    if not seeds:
        return {**summaries[0], "state": state}
    keys = (f"best_{metric}", f"last_{metric}", f"teacher_{metric}", "steps", "steps_per_epoch",
            "wall_s")  # fmt: skip
    combined = {k: [s[k] for s in summaries] for k in keys}
    return {**combined, "seeds": seeds, "members": summaries, "state": state}
