"""The classification task: image classifiers (and their distillation) for train.py's loop.

`build(config, *, mesh, seeds)` builds the data (device-resident arrays augmented inside jit,
or tf.data streams), the student (and the frozen teacher when the distiller uses one), the
distiller's learnable parts, the train step and the top-1 / top-5 evaluation, as a
`tasks.Task`. See luminet_jax/config_lib.py for the config's sections.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from luminet_jax import (
    assemble,
    distillers,
    evaluation,
    members,
    models,
    sharding,
    steps,
    tasks,
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
    from luminet_jax.data import device_data, sources  # noqa: PLC0415

    data_dir, image_size = ds.data_dir or None, ds.image_size or None

    def to_global(local_batches):
        for local in local_batches:
            yield sharding.to_global(local, mesh)

    if ds.device_resident:  # CIFAR-sized: both splits decoded once and kept
        images, labels = sources.load_arrays(ds.name, info.train_split, data_dir)
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
        eval_arrays = sources.load_arrays(ds.name, info.eval_split, data_dir)
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

    from luminet_jax.data import input_pipeline  # noqa: PLC0415 (TensorFlow: streaming only)

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


def _eval_record(m: dict[str, float]) -> dict[str, float]:
    """What the loop writes as eval/<key>: top-1, top-5, loss (and a cohort's members)."""
    return {
        "top1": m["top1"],
        "top5": m["top5"],
        "loss": m["loss"],
        # A cohort student (DML): each member's "member{i}_top1"/"_top5".
        **{n: v for n, v in m.items() if n.startswith("member")},
    }


def build(config: ml_collections.ConfigDict, *, mesh: Any, seeds: list[int]) -> tasks.Task:
    """The classification task of `config` (see luminet_jax/config_lib.py).

    Raises:
      ValueError: a training set smaller than one batch, a missing teacher checkpoint, a
        teacher checkpoint that does not match the teacher model.
    """
    from luminet_jax.data import sources  # noqa: PLC0415

    distiller = distillers.get_distiller(**config.distiller)
    uses_teacher = distiller.uses_teacher
    ds = config.dataset
    info = sources.get_source(ds.name, ds.data_dir or None).info
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
    tx, lr_fn = tasks.make_optimizer(config, steps_per_epoch)

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

    prepare_state = None
    if distiller.uses_train_labels:  # e.g. CRD's sampler: the labels of every sample
        train_labels = data.train_labels()

        def prepare_state(state):
            return state.replace(extra_state=distiller.data_state(state.extra_state, train_labels))

    raw_eval = steps.make_eval_step(student, axis_name=AXIS)
    if seeds:
        eval_step = members.shard_eval_step(raw_eval, mesh)
    else:
        eval_step = sharding.shard_eval_step(raw_eval, mesh)

    def evaluate(state):
        results = evaluation.evaluate(eval_step, _variables(state), data.eval_batches())
        if seeds:
            return [_eval_record(m) for m in results]
        return _eval_record(results)

    evaluate_teacher = None
    if uses_teacher and config.eval_teacher:

        def evaluate_teacher():
            t_step = sharding.shard_eval_step(steps.make_eval_step(teacher, axis_name=AXIS), mesh)
            return evaluation.evaluate(t_step, teacher_vars, data.eval_batches())

    return tasks.Task(
        metric="top1",
        steps_per_epoch=steps_per_epoch,
        init=init,
        teacher_variables=teacher_vars,
        train_batches=data.train_batches,
        train_step=steps.make_train_step(
            student,
            teacher if uses_teacher else None,
            distiller,
            tx,
            steps_per_epoch=steps_per_epoch,
            axis_name=AXIS,
            lr_fn=lr_fn,
            dropout_seed=config.seed,
        ),
        evaluate=evaluate,
        evaluate_teacher=evaluate_teacher,
        prepare_state=prepare_state,
        train_metric="top1",
        describe=f"Student {config.student.name}",
        teacher_name=teacher_name,
    )
