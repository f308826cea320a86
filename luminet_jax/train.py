"""The training loop: the one place that reads the config, loops, logs, saves and evaluates.

`train_and_evaluate(config, workdir)` builds the mesh, the data, the student (and the
frozen teacher when the distiller uses one), the optimizer and the sharded steps, resumes
from `workdir` if it holds a checkpoint, trains, evaluates and checkpoints. Everything
below it is a pure library function that takes plain arguments (see configs/common.py for
the config's sections).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from luminet_jax import (
    assemble,
    checkpoint,
    distillers,
    evaluation,
    fast_conv,
    interrupt,
    members,
    metrics_io,
    models,
    optim,
    sharding,
    steps,
)
from luminet_jax import state as state_lib

AXIS = sharding.DATA_AXIS


def _variables(state: state_lib.TrainState) -> dict[str, Any]:
    return {"params": state.params, "batch_stats": state.batch_stats}


@dataclasses.dataclass(frozen=True)
class _Data:
    """The datasets as the loop sees them: global batches on the "data" mesh."""

    steps_per_epoch: int
    image_size: int
    train_batches: Callable[[int], Callable[[int], Any]]  # start_step -> (step -> batch)
    eval_batches: Callable[[], Iterator[dict[str, jax.Array]]]  # a fresh pass each call
    train_labels: Callable[[], np.ndarray]  # labels indexed like the batches' "index"


def _make_data(
    ds: ml_collections.ConfigDict,
    info: Any,
    *,
    mesh: Any,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    seeds: list[int],
) -> _Data:
    """Device-resident data (augmented inside jit) or tf.data streams, per `ds`.

    With `seeds` (several runs in one job) each train batch stacks one batch per seed.
    """
    from luminet_jax.data import device_data, input_pipeline  # noqa: PLC0415

    data_dir, image_size = ds.data_dir or None, ds.image_size or None

    def to_global(local_batches):
        for local in local_batches:
            yield sharding.to_global(local, mesh)

    if ds.device_resident:  # CIFAR-sized: both splits decoded once and kept
        images, labels = input_pipeline.load_arrays(ds.name, info.train_split, data_dir)
        train = device_data.DeviceData(
            images,
            labels,
            mesh=mesh,
            global_batch=batch_size,
            seed=seeds or seed,
            mean=info.mean,
            std=info.std,
            augment=ds.augment,
        )
        eval_arrays = input_pipeline.load_arrays(ds.name, info.eval_split, data_dir)
        return _Data(
            steps_per_epoch=train.steps_per_epoch,
            image_size=images.shape[1],
            train_batches=lambda start_step: train.batch,
            train_labels=lambda: labels,
            eval_batches=lambda: to_global(
                device_data.eval_batches(
                    *eval_arrays, eval_batch_size, mean=info.mean, std=info.std
                )
            ),
        )

    def train_batches(start_step: int) -> Callable[[int], Any]:
        iters = [
            input_pipeline.make_train_iter(
                ds.name,
                global_batch=batch_size,
                seed=member_seed,
                data_dir=data_dir,
                start_step=start_step,
                augment=ds.augment,
                image_size=image_size,
            )
            for member_seed in (seeds or [seed])
        ]
        if seeds:
            return lambda step: members.to_global([next(it) for it in iters], mesh)
        return lambda step: sharding.to_global(next(iters[0]), mesh)

    eval_kwargs = dict(global_batch=eval_batch_size, data_dir=data_dir, image_size=image_size)
    return _Data(
        # Each process drops the remainder of its own share (one step less at most).
        steps_per_epoch=input_pipeline.train_steps_per_epoch(
            ds.name, global_batch=batch_size, data_dir=data_dir
        ),
        image_size=image_size or info.image_size,
        train_batches=train_batches,
        eval_batches=lambda: to_global(input_pipeline.make_eval_iter(ds.name, **eval_kwargs)),
        train_labels=lambda: input_pipeline.train_labels(ds.name, data_dir),
    )


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
    """Trains and evaluates the student described by `config`, in `workdir`.

    With `config.seeds = "0,1,2"` it trains one independent student per seed in the same
    compiled step (`luminet_jax.members`), each written to `workdir/seed{k}/` exactly as a
    run with `config.seed = k` writes `workdir/`.

    Args:
      config: a config as built by `configs/*.py` (see luminet_jax/config_lib.py).
      workdir: where checkpoints (`ckpt/`), `metrics.jsonl`, TensorBoard files and
        `summary.json` go. A checkpoint already there is resumed from.

    Returns:
      The summary ("best_top1", "last_top1", "teacher_top1", "steps", "steps_per_epoch",
      "wall_s") plus "state", the final `TrainState`; with seeds, "members" (one summary
      per seed, in order) and "state" stacked along a leading members axis.

    Raises:
      ValueError: a batch size that does not divide over the devices, a missing teacher
        checkpoint, a teacher checkpoint that does not match the teacher model, seeds that
        repeat.
      FloatingPointError: a non-finite loss (or gradient norm), naming the step.
    """
    from luminet_jax.data import input_pipeline  # noqa: PLC0415 (tensorflow: lazily)

    start_time = time.time()
    seeds = members.parse_seeds(config.get("seeds", ""))
    mesh = sharding.make_mesh()
    sharding.check_global_batch(config.batch_size, mesh)
    sharding.check_global_batch(config.eval_batch_size, mesh)

    distiller = distillers.get_distiller(**config.distiller)
    uses_teacher = bool(getattr(distiller, "uses_teacher", True))
    ds = config.dataset
    info = input_pipeline.dataset_info(ds.name, data_dir=ds.data_dir or None)
    num_classes = info.num_classes
    dtype = jnp.dtype(config.compute_dtype) if config.compute_dtype else None
    student = models.get_model(
        **config.student, num_classes=num_classes, dtype=dtype, axis_name=AXIS
    )
    teacher, teacher_vars, teacher_name = None, None, ""
    if uses_teacher:
        teacher, teacher_vars, teacher_name = assemble.build_teacher(
            config.teacher,
            num_classes=num_classes,
            image_size=ds.image_size or info.image_size,
            dtype=dtype,
        )
        teacher_vars = jax.device_put(teacher_vars, sharding.replicated(mesh))

    data = _make_data(
        ds,
        info,
        mesh=mesh,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        seed=config.seed,
        seeds=seeds,
    )
    steps_per_epoch, size = data.steps_per_epoch, data.image_size
    if steps_per_epoch <= 0:
        raise ValueError(f"{info.num_train} training examples < batch {config.batch_size}")
    total_steps = (
        config.num_train_steps
        if config.num_train_steps > 0
        else config.num_epochs * steps_per_epoch
    )
    eval_every = config.eval_every_steps or config.eval_every_epochs * steps_per_epoch

    lr_fn = optim.make_schedule(**config.schedule, steps_per_epoch=steps_per_epoch)
    tx = optim.make_optimizer(learning_rate=lr_fn, **config.optim)

    def init(seed, teacher_variables):
        s_rng, d_rng = jax.random.split(jax.random.key(seed))
        variables = student.init(s_rng, jnp.zeros((1, size, size, 3), jnp.float32), train=False)
        extra = assemble.init_distiller(
            distiller,
            d_rng,
            student=(student, variables),
            teacher=(teacher, teacher_variables) if uses_teacher else None,
            image_size=size,
            num_train=info.num_train,
            names=(config.student.name, teacher_name),
        )
        return state_lib.create_train_state(variables, tx, extra)

    # One member per seed (stacked states), or the single run of config.seed.
    member_seeds = seeds or [config.seed]
    workdirs = [os.path.join(workdir, f"seed{k}") for k in seeds] or [workdir]
    init_fn = jax.vmap(init, in_axes=(0, None)) if seeds else init
    state = jax.jit(init_fn, out_shardings=sharding.replicated(mesh))(
        jnp.asarray(member_seeds if seeds else config.seed, jnp.uint32), teacher_vars
    )
    view = (lambda tree, k: members.member(tree, k)) if seeds else (lambda tree, k: tree)
    if hasattr(distiller, "data_state"):  # e.g. CRD's sampler: the labels of every sample
        train_labels = data.train_labels()
        with_labels = [
            view(state, k).replace(
                extra_state=distiller.data_state(view(state, k).extra_state, train_labels)
            )
            for k in range(len(member_seeds))
        ]
        rep = sharding.replicated(mesh)
        state = members.stack(with_labels, mesh) if seeds else jax.device_put(with_labels[0], rep)
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
        "Student %s (%d params, %d extra from the distiller)%s; %d steps/epoch, %d total, "
        "starting at %d.",
        config.student.name,
        sum(x.size for x in jax.tree.leaves(view(state, 0).params)),
        sum(x.size for x in jax.tree.leaves(view(state, 0).extra_params)),
        f", {len(seeds)} seeds {seeds} in one job" if seeds else "",
        steps_per_epoch,
        total_steps,
        start_step,
    )

    next_batch = data.train_batches(start_step)
    eval_batches = data.eval_batches
    raw_eval = steps.make_eval_step(student, axis_name=AXIS)
    step_fn = steps.make_train_step(
        student,
        teacher if uses_teacher else None,
        distiller,
        tx,
        steps_per_epoch=steps_per_epoch,
        axis_name=AXIS,
        lr_fn=lr_fn,
        dropout_seed=config.seed,
    )
    # Opt-in CPU speed-up: convolution weight gradients as matmuls (numerically the same).
    step_fn = fast_conv.wrap(step_fn, bool(config.fast_conv), config.fast_conv or "pointwise")
    if seeds:
        train_step = members.shard_train_step(step_fn, mesh, seeds)
        eval_step = members.shard_eval_step(raw_eval, mesh)
    else:
        train_step = sharding.shard_train_step(step_fn, mesh)
        eval_step = sharding.shard_eval_step(raw_eval, mesh)

    writers = [metrics_io.MetricWriter(w) for w in workdirs]
    summaries: list[dict[str, Any]] = [{"teacher_top1": math.nan} for _ in workdirs]
    if uses_teacher and config.eval_teacher:
        t_eval_step = sharding.shard_eval_step(steps.make_eval_step(teacher, axis_name=AXIS), mesh)
        t_metrics = evaluation.evaluate(t_eval_step, teacher_vars, eval_batches())
        for summary, writer in zip(summaries, writers):
            summary["teacher_top1"] = float(t_metrics["top1"])
            writer.write(start_step, {"teacher_top1": t_metrics["top1"]})
        logging.info("Teacher %s top-1 %.4f", teacher_name, t_metrics["top1"])

    # The best eval so far survives a resume through metrics.jsonl.
    best_top1, last_top1, last_eval_step = [], [], []
    for w in workdirs:
        earlier = [r for r in metrics_io.read_metrics(w) if r["step"] <= start_step]
        best, last = metrics_io.best_and_last(earlier)
        best_top1.append(-math.inf if math.isnan(best) else best)
        last_top1.append(last)
        last_eval_step.append(max((r["step"] for r in earlier if "eval/top1" in r), default=-1))
    tag = (lambda k: f"seed {member_seeds[k]} ") if seeds else (lambda k: "")

    def run_eval(step: int) -> None:
        results = evaluation.evaluate(eval_step, _variables(state), eval_batches())
        for k, m in enumerate(results if seeds else [results]):
            best_top1[k], last_top1[k] = max(best_top1[k], m["top1"]), m["top1"]
            last_eval_step[k] = step
            writers[k].write(
                step,
                {
                    "epoch": step / steps_per_epoch,
                    "eval/top1": m["top1"],
                    "eval/top5": m["top5"],
                    "eval/loss": m["loss"],
                    "eval/best_top1": best_top1[k],
                    # A cohort student (DML): each member's "member{i}_top1"/"_top5".
                    **{f"eval/{n}": v for n, v in m.items() if n.startswith("member")},
                },
            )
            logging.info(
                "%sstep %d eval: top1 %.4f top5 %.4f loss %.4f (best top1 %.4f)",
                tag(k), step, m["top1"], m["top5"], m["loss"], best_top1[k],
            )  # fmt: skip

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
                        "%sstep %d/%d (epoch %.2f) loss %.4f top1 %.3f lr %.4g | %.1f img/s | "
                        "ETA %s",
                        tag(k), step, total_steps, step / steps_per_epoch, means["loss"],
                        means.get("top1", math.nan), means.get("lr", math.nan),
                        rate * config.batch_size * len(workdirs),
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
                    best_top1=float(best_top1[k]),
                    last_top1=float(last_top1[k]),
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
    keys = ("best_top1", "last_top1", "teacher_top1", "steps", "steps_per_epoch", "wall_s")
    combined = {k: [s[k] for s in summaries] for k in keys}
    return {**combined, "seeds": seeds, "members": summaries, "state": state}
