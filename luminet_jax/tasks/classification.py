"""The classification task: image classifiers (and their distillation) for train.py's loop.

`build(config, *, mesh)` reads the config's sections (luminet_jax/config_lib.py) and builds
the data (device-resident arrays augmented inside jit, or tf.data streams), the student (and
the frozen teacher when the distiller uses one, loaded once), the distiller's learnable
parts, the train step (`steps.make_train_step`) and the top-1 / top-5 evaluation, as a
`base.Task`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from luminet_jax import distillers, evaluation, models, sharding, steps, teachers
from luminet_jax import state as state_lib
from luminet_jax.tasks import base

AXIS = sharding.DATA_AXIS


def check_names(config: Any) -> None:
    """The student's, teacher's (when the distiller uses one) and distiller's names."""
    distiller = distillers.get_distiller(**config.distiller)
    models.canonical_name(config.student.name)
    if distiller.uses_teacher:
        for name in base.split_names(config.teacher.name):
            models.canonical_name(name)


def teacher_hint(config: Any, *, prog: str) -> str:
    """A teacher for a classifier: a teacher run's workdir or a converted checkpoint."""
    first = base.split_names(config.teacher.name)[:1] or ["NAME"]
    return (
        f"give a teacher run's workdir ({prog} --config cifar100_teacher:{first[0]} "
        "--workdir T), a luminet-convert output directory or a PyTorch-keyed .npz."
    )


def build_teacher(
    names: str,
    paths: str,
    *,
    num_classes: int,
    image_size: int,
    dtype: Any,
    model_kwargs: dict[str, Any],
) -> tuple[Any, Any, str]:
    """The teacher module (an ensemble for several names) and its loaded variables.

    Args:
      names: comma-separated model names (several: the mean of their logits).
      paths: as many comma-separated checkpoints (`checkpoint.load_teacher`).
      num_classes, image_size, dtype: as the student's.
      model_kwargs: further model fields (e.g. a ViT's patch_size).

    Returns:
      (module, variables, name): name joins the models with "+".
    """
    names_list, paths_list = base.split_names(names), base.split_names(paths)
    if not names_list:
        raise ValueError("The distiller uses a teacher but config.teacher.name is empty.")
    if len(paths_list) != len(names_list):
        raise ValueError(
            f"config.teacher.checkpoint must give one path per teacher ({names_list}), got "
            f"{paths_list or 'none'}; set --config.teacher.checkpoint=PATH[,PATH...] (an orbax "
            "dir, a PyTorch-keyed .npz, or a teacher run's workdir)."
        )
    kw = dict(num_classes=num_classes, dtype=dtype, axis_name=AXIS, **model_kwargs)
    modules = [models.get_model(name, **kw) for name in names_list]
    variables = []
    for name, path in zip(names_list, paths_list):
        logging.info("Loading teacher %s from %s", name, path)
        variables.append(
            teachers.load_teacher(
                path, name, num_classes=num_classes, image_size=image_size, **model_kwargs
            )
        )
    if len(modules) == 1:
        return modules[0], variables[0], names_list[0]
    ensemble = models.make_ensemble(modules)
    return ensemble, ensemble.combine_variables(variables), "+".join(names_list)


def init_distiller(
    distiller: Any,
    rng: jax.Array,
    *,
    student: tuple[Any, Any],
    teacher: tuple[Any, Any] | None,
    image_size: int,
    num_train: int,
    names: tuple[str, str],
) -> dict[str, Any]:
    """A distiller's learnable parts and state (`distiller.init`), from features of a dummy
    batch at the run's image size; {} for distillers without them.

    A feature key the models lack raises a KeyError naming the models.
    """
    dummy = jnp.zeros((2, image_size, image_size, 3), jnp.float32)
    s_module, s_vars = student
    _, s_feats = s_module.apply(s_vars, dummy, train=False)
    t_module, t_vars, t_feats = None, None, None
    if teacher is not None:
        t_module, t_vars = teacher
        _, t_feats = t_module.apply(t_vars, dummy, train=False)
    try:
        return distiller.init(
            rng, s_feats, t_feats, teacher_variables=t_vars, num_train=num_train, teacher=t_module
        )
    except KeyError as e:
        raise KeyError(
            f"{type(distiller).__name__} with student {names[0]!r} and teacher "
            f"{names[1] or 'none'!r}: {e.args[0] if e.args else e}"
        ) from e


@dataclasses.dataclass(frozen=True)
class _Data:
    """The datasets as the loop sees them: global batches on the "data" mesh."""

    steps_per_epoch: int
    image_size: int
    train_batches: Callable[[int, int], Callable[[int], Any]]  # (start_step, seed) -> batches
    eval_batches: Callable[[], Iterator[dict[str, jax.Array]]]  # a fresh pass each call
    train_labels: Callable[[], np.ndarray]  # labels indexed like the batches' "index"


def _make_data(
    ds: Any, info: Any, *, mesh: Any, batch_size: int, eval_batch_size: int, seed: int
) -> _Data:
    """Device-resident data (augmented inside jit) or tf.data streams, per the dataset
    section `ds`."""
    from luminet_jax.data import device_data, sources  # noqa: PLC0415

    data_dir, image_size = ds.data_dir or None, ds.image_size or None

    if ds.device_resident:  # CIFAR-sized: both splits decoded once and kept
        images, labels = sources.load_arrays(ds.name, info.train_split, data_dir)
        train = device_data.DeviceData(
            images,
            labels,
            mesh=mesh,
            global_batch=batch_size,
            seed=seed,
            mean=info.mean,
            std=info.std,
            augment=ds.augment,
        )
        evaluation_data = device_data.EvalData(  # normalized once, kept on the devices
            *sources.load_arrays(ds.name, info.eval_split, data_dir),
            mesh=mesh,
            global_batch=eval_batch_size,
            mean=info.mean,
            std=info.std,
        )
        return _Data(
            steps_per_epoch=train.steps_per_epoch,
            image_size=images.shape[1],
            train_batches=lambda start_step, seed: train.with_seed(seed).batch,
            train_labels=lambda: labels,
            eval_batches=evaluation_data.batches,
        )

    from luminet_jax.data import input_pipeline  # noqa: PLC0415 (TensorFlow: streaming only)

    # uint8 batches (a quarter of float32's bytes), normalized by the steps on the devices
    # (`steps.model_input`), put there by a background thread ahead of use.
    def train_batches(start_step: int, seed: int) -> Callable[[int], Any]:
        it = input_pipeline.make_train_iter(
            ds.name,
            global_batch=batch_size,
            seed=seed,
            data_dir=data_dir,
            start_step=start_step,
            augment=ds.augment,
            image_size=image_size,
            output="uint8",
        )
        batches = sharding.Prefetch(it, mesh)
        return lambda step: next(batches)

    eval_kwargs = dict(
        global_batch=eval_batch_size, data_dir=data_dir, image_size=image_size, output="uint8"
    )
    return _Data(
        # Each process drops the remainder of its own share (one step less at most).
        steps_per_epoch=input_pipeline.train_steps_per_epoch(
            ds.name, global_batch=batch_size, data_dir=data_dir
        ),
        image_size=image_size or info.image_size,
        train_batches=train_batches,
        eval_batches=lambda: sharding.Prefetch(
            input_pipeline.make_eval_iter(ds.name, **eval_kwargs), mesh
        ),
        train_labels=lambda: input_pipeline.train_labels(ds.name, data_dir),
    )


def _eval_record(m: dict[str, float]) -> dict[str, float]:
    """What the loop writes as eval/<key>: top-1, top-5, loss (and a cohort's peers)."""
    return {
        "top1": m["top1"],
        "top5": m["top5"],
        "loss": m["loss"],
        # A cohort student (DML): each peer's "member{i}_top1"/"_top5".
        **{n: v for n, v in m.items() if n.startswith("member")},
    }


def _models(config: Any, info: Any, distiller: Any, mesh: Any):
    """(student, teacher, teacher's variables replicated on `mesh`, teacher's name); the
    teacher entries are None and "" for a distiller without a teacher."""
    dtype = base.compute_dtype(config.compute_dtype)
    kw = dict(num_classes=info.num_classes, dtype=dtype)
    student = models.get_model(**config.student, **kw, axis_name=AXIS)
    if not distiller.uses_teacher:
        return student, None, None, ""
    # Further keys of the teacher section are model fields (e.g. a ViT's patch_size).
    fields = {k: v for k, v in config.teacher.items() if k not in ("name", "checkpoint")}
    size = config.dataset.image_size or info.image_size
    teacher, variables, name = build_teacher(
        config.teacher.name, config.teacher.checkpoint, image_size=size, model_kwargs=fields, **kw
    )
    return student, teacher, jax.device_put(variables, sharding.replicated(mesh)), name


def build(config: Any, *, mesh: Any) -> base.Task:
    """The classification task of `config` (see luminet_jax/config_lib.py).

    Raises:
      ValueError: a training set smaller than one batch, a missing teacher checkpoint, a
        teacher checkpoint that does not match the teacher model.
    """
    from luminet_jax.data import sources  # noqa: PLC0415

    distiller = distillers.get_distiller(**config.distiller)
    ds = config.dataset
    info = sources.get_source(ds.name, ds.data_dir or None).info
    student, teacher, teacher_vars, teacher_name = _models(config, info, distiller, mesh)
    data = _make_data(
        ds,
        info,
        mesh=mesh,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        seed=config.seed,
    )
    steps_per_epoch, size = data.steps_per_epoch, data.image_size
    if steps_per_epoch <= 0:
        raise ValueError(f"{info.num_train} training examples < batch {config.batch_size}")
    tx, lr_fn = base.make_optimizer(config, steps_per_epoch)

    def init(seed, teacher_variables):
        s_rng, d_rng = jax.random.split(jax.random.key(seed))
        variables = student.init(s_rng, jnp.zeros((1, size, size, 3), jnp.float32), train=False)
        extra = init_distiller(
            distiller,
            d_rng,
            student=(student, variables),
            teacher=(teacher, teacher_variables) if teacher is not None else None,
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

    pixels = (info.mean, info.std)  # uint8 batches are normalized on the devices
    evaluate, evaluate_teacher = _evaluation(
        student, teacher, teacher_vars if config.eval_teacher else None, data, mesh, pixels
    )
    train_step = steps.make_train_step(
        student,
        teacher,
        distiller,
        tx,
        steps_per_epoch=steps_per_epoch,
        axis_name=AXIS,
        lr_fn=lr_fn,
        dropout_seed=config.seed,
        pixels=pixels,
    )
    return base.Task(
        metric="top1",
        steps_per_epoch=steps_per_epoch,
        seed=config.seed,
        init=init,
        teacher_variables=teacher_vars,
        train_batches=data.train_batches,
        train_step=train_step,
        evaluate=evaluate,
        evaluate_teacher=evaluate_teacher,
        prepare_state=prepare_state,
        train_metric="top1",
        describe=f"Student {config.student.name}",
        teacher_name=teacher_name,
    )


def _evaluation(student: Any, teacher: Any, teacher_vars: Any, data: _Data, mesh: Any, pixels: Any):
    """(evaluate(state), evaluate_teacher() or None without `teacher_vars`): top-1, top-5 and
    loss over the eval split; each eval step compiles once."""
    make = lambda model: sharding.shard_eval_step(  # noqa: E731
        steps.make_eval_step(model, axis_name=AXIS, pixels=pixels), mesh
    )
    eval_step = make(student)

    def evaluate(state):
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        return _eval_record(evaluation.evaluate(eval_step, variables, data.eval_batches()))

    if teacher_vars is None:
        return evaluate, None
    t_step = make(teacher)
    return evaluate, lambda: evaluation.evaluate(t_step, teacher_vars, data.eval_batches())
