"""The detection task: Faster R-CNN (and its distillation) for train.py's one loop.

`config.task = "detection"` selects it (`luminet_jax.tasks`). `build(config, *, mesh)`
returns a `base.Task`: the detector's initialization (optionally an ImageNet backbone),
resumable static-shape batches (`detection.data`), the train step (`detection.distill`'s,
which is the plain detection step for a distiller without a teacher) and COCO box AP over
the eval split (`detection.coco`, primary metric "AP"). Config sections
(configs/tiny_boxes_frcnn.py, configs/coco_frcnn_r101_r18.py):

    dataset   name (`detection.sources`: "tiny_boxes_sample", "coco_dir:<path>", "coco2017"),
              data_dir, pad_size (H, W) (eval, and train without pad_sizes), pad_sizes
              (optional: the train batches' aspect-ratio buckets, `data.make_train_iter`;
              one compilation of the train step each), max_gt, short_sides, max_size
              (train), test_short_side, test_max_size, flip, filter_empty, mean, std, bgr,
              num_workers
    student   name (a key of `rcnn.DETECTORS`) + FasterRCNN fields (num_classes is the
              dataset's), and backbone_checkpoint: "" or ImageNet ResNet weights
              (`convert.load_backbone`: torchvision .pth, C2 .pkl, detectron2 names)
    teacher   name (a DETECTORS key), checkpoint (a detection run's workdir, an orbax
              directory of {"params", "frozen"}, or a detectron2 .pkl / .pth), + fields
              that differ from the student's (the teacher gets the student's detector
              fields otherwise: same RoI sampling, heads' widths, ...); mean, std, bgr:
              the teacher's own pixel normalization as the dataset's fields (default the
              dataset's), for its training input and its eval (`distill.pixel_converter`)
    the rest as classification (batch_size, optim, schedule, distiller, ...).

The teacher is loaded once, replicated, and never enters the TrainState or the checkpoints.
"""

from __future__ import annotations

import os
from typing import Any

import jax
from absl import logging
from jax.sharding import PartitionSpec as P

from luminet_jax import checkpoint, distillers, sharding
from luminet_jax import state as state_lib
from luminet_jax.detection import coco, data, distill, rcnn, sources, steps
from luminet_jax.tasks import base

AXIS = sharding.DATA_AXIS
# config.student / config.teacher keys that are not FasterRCNN fields.
_STUDENT_EXTRA = ("name", "backbone_checkpoint")
_TEACHER_EXTRA = ("name", "checkpoint", "mean", "std", "bgr")


def shard_predict(model: rcnn.FasterRCNN, mesh: Any, convert: Any = None):
    """Jitted `predict(variables, batch)` per shard over "data" (`coco.evaluate`'s contract);
    `convert(images, image_size)` first renormalizes the images (a teacher's own input)."""
    predict = steps.make_predict_step(model)
    if convert is not None:
        plain = predict
        predict = lambda v, b: plain(v, {**b, "image": convert(b["image"], b["image_size"])})  # noqa: E731
    sharded = jax.shard_map(
        predict,
        mesh=mesh,
        in_specs=(P(), P(AXIS)),
        out_specs=P(AXIS),
        check_vma=True,
    )
    return jax.jit(sharded)


def load_detector_variables(path: str, model: rcnn.FasterRCNN) -> dict[str, Any]:
    """{"params", "frozen"} of `model` from a detection workdir, an orbax dir, a detectron2 file
    or `zoo:NAME` (`luminet_jax.teachers`).

    Raises:
      FileNotFoundError: `path` does not exist.
      ValueError: an entry is missing, unexpected or of the wrong shape for `model`.
    """
    from luminet_jax import teachers  # noqa: PLC0415
    from luminet_jax.detection import convert  # noqa: PLC0415

    path = os.path.abspath(teachers.local_file(path))  # zoo:NAME -> its checked .pkl
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Detection teacher checkpoint {path} does not exist (expected a detection run's "
            "workdir, an orbax directory of {params, frozen} or a detectron2 .pkl / .pth)."
        )
    if os.path.isfile(path):
        return convert.from_detectron2(model, convert.load_state_dict(path))
    if os.path.isdir(os.path.join(path, checkpoint.CKPT_SUBDIR)):
        ckpt = checkpoint.Checkpointer(path)
        try:
            raw = ckpt.restore_raw()
        finally:
            ckpt.close()
        variables = {"params": raw["params"], "frozen": raw.get("batch_stats") or {}}
    else:
        loaded = checkpoint.load_variables(path)
        variables = {"params": loaded["params"], "frozen": loaded.get("frozen") or {}}
    checkpoint.validate_variables(
        variables, rcnn.abstract_variables(model), source=f"detection teacher {path}"
    )
    return variables


def _fields(section: Any, skip: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k not in skip}


def _pad_sizes(ds: Any) -> tuple[tuple[int, int], ...]:
    """The dataset's train pad sizes (`pad_sizes`; configs without the field: none)."""
    return tuple(tuple(int(x) for x in p) for p in ds.get("pad_sizes", ()))


def _data_kwargs(ds: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(make_train_iter kwargs, make_eval_iter kwargs) of the dataset section."""
    common = dict(
        pad_size=tuple(ds.pad_size),
        max_gt=ds.max_gt,
        mean=tuple(ds.mean),
        std=tuple(ds.std),
        bgr=ds.bgr,
        num_workers=ds.num_workers,
    )
    train = dict(
        common,
        short_sides=tuple(ds.short_sides),
        max_size=ds.max_size,
        flip=ds.flip,
        filter_empty=ds.filter_empty,
        pad_sizes=_pad_sizes(ds),
    )
    return train, dict(common, short_side=ds.test_short_side, max_size=ds.test_max_size)


def check_names(config: Any) -> None:
    """The student's, teacher's (when the distiller uses one) and distiller's names."""
    distiller = distillers.get_distiller(**config.distiller)
    names = [config.student.name] + ([config.teacher.name] if distiller.uses_teacher else [])
    for name in names:
        if name not in rcnn.DETECTORS:
            raise KeyError(f"Unknown detector {name!r}; known: {sorted(rcnn.DETECTORS)}")


def teacher_hint(config: Any, *, prog: str) -> str:
    """A detection teacher: a detection run's workdir, an orbax dir or a detectron2 file."""
    del config
    return (
        f"give a detection teacher run's workdir ({prog} --config coco_frcnn_teacher "
        "--workdir T), an orbax directory of its variables (luminet_jax.detection.convert) or "
        "a detectron2 model zoo .pkl / .pth."
    )


def _checked_distiller(config: Any) -> Any:
    """The config's distiller; seeds in one job and feature distillers are refused."""
    if config.get("seeds", ""):
        raise ValueError(
            f"config.seeds={config.seeds!r}: several seeds in one job are not supported for "
            "detection; run one job per seed (--config.seed=K)."
        )
    distiller = distillers.get_distiller(**config.distiller)
    if distiller.uses_feats or distiller.uses_train_labels:
        raise ValueError(
            f"distiller {config.distiller.name!r} is not supported for detection: only logit "
            "distillers (on the RoI head's class logits) are."
        )
    return distiller


def _detectors(config: Any, num_classes: int, uses_teacher: bool, mesh: Any):
    """(student, teacher, the teacher's variables replicated on `mesh`, the converter of the
    student's input to the teacher's own pixel normalization or None); the teacher's entries
    are None for a distiller without a teacher."""
    ds, t = config.dataset, config.teacher
    dtype = base.compute_dtype(config.compute_dtype)
    fields = _fields(config.student, _STUDENT_EXTRA)
    student = rcnn.get_detector(config.student.name, num_classes=num_classes, dtype=dtype, **fields)
    if not uses_teacher:
        return student, None, None, None
    own = (t.get("mean", ds.mean), t.get("std", ds.std), t.get("bgr", ds.bgr))
    teacher_input = distill.pixel_converter((ds.mean, ds.std, ds.bgr), own)
    t_fields = {**fields, **_fields(t, _TEACHER_EXTRA)}
    teacher = rcnn.get_detector(t.name, num_classes=num_classes, dtype=dtype, **t_fields)
    if not t.checkpoint:
        raise base.missing_teacher(config)
    logging.info("Loading teacher %s from %s", t.name, t.checkpoint)
    variables = jax.device_put(
        load_detector_variables(t.checkpoint, teacher), sharding.replicated(mesh)
    )
    return student, teacher, variables, teacher_input


def build(config: Any, *, mesh: Any) -> base.Task:
    """The detection task of `config` (see the module docstring for its sections).

    Raises:
      ValueError: seeds in one job, a feature distiller, a training split smaller than one
        batch, a teacher checkpoint that does not match the teacher detector.
    """
    distiller = _checked_distiller(config)
    uses_teacher = distiller.uses_teacher
    ds = config.dataset
    source = sources.get_source(ds.name, ds.data_dir or None)
    steps_per_epoch, train_batches, eval_batches, gt = _batches(config, source, mesh)
    num_classes = source.num_classes
    student, teacher, teacher_vars, teacher_input = _detectors(
        config, num_classes, uses_teacher, mesh
    )
    tx, lr_fn = base.make_optimizer(config, steps_per_epoch)
    pad_size = tuple(ds.pad_size)

    def init(seed, teacher_variables):
        del teacher_variables
        # rbg keys: XLA compiles threefry for ~100 initializers very slowly on CPU (rcnn).
        v = rcnn.init_variables(student, jax.random.key(seed, impl="rbg"), image_size=pad_size)
        return state_lib.create_train_state({"params": v["params"], "batch_stats": v["frozen"]}, tx)

    prepare_state = None
    if config.student.get("backbone_checkpoint", ""):
        prepare_state = _backbone_loader(student, config.student.backbone_checkpoint, tx)

    # The plain detection step when the distiller has no teacher (vanilla).
    train_step = distill.make_train_step(
        student,
        teacher,
        distiller,
        tx,
        axis_name=AXIS,
        lr_fn=lr_fn,
        seed=config.seed,
        steps_per_epoch=steps_per_epoch,
        teacher_input=teacher_input,
    )

    predict = shard_predict(student, mesh)
    evaluate_teacher = None
    if uses_teacher and config.eval_teacher:
        t_predict = shard_predict(teacher, mesh, teacher_input)
        evaluate_teacher = lambda: coco.evaluate(t_predict, teacher_vars, eval_batches(), gt)  # noqa: E731
    return base.Task(
        metric="AP",
        steps_per_epoch=steps_per_epoch,
        seed=config.seed,
        init=init,
        teacher_variables=teacher_vars,
        train_batches=train_batches,
        train_step=train_step,
        evaluate=lambda s: coco.evaluate(predict, steps.variables_of(s), eval_batches(), gt),
        evaluate_teacher=evaluate_teacher,
        prepare_state=prepare_state,
        train_metric="fast_rcnn/cls_accuracy",
        describe=f"Detector {config.student.name} ({num_classes} classes, {ds.name})",
        teacher_name=config.teacher.name if uses_teacher else "",
    )


def _batches(config: Any, source: Any, mesh: Any):
    """(steps per epoch, train_batches(start_step, seed) -> (step -> global batch),
    eval_batches() -> one pass over the eval split in global batches, the eval split's
    COCO ground truth)."""
    ds = config.dataset
    train_split, eval_split = source.split(source.train_split), source.split(source.eval_split)
    train_kwargs, eval_kwargs = _data_kwargs(ds)
    steps_per_epoch = data.train_steps_per_epoch(
        train_split,
        global_batch=config.batch_size,
        process_count=jax.process_count(),
        filter_empty=ds.filter_empty,
        pad_sizes=train_kwargs["pad_sizes"],
        short_sides=train_kwargs["short_sides"],
        max_size=ds.max_size,
    )
    if steps_per_epoch <= 0:
        raise ValueError(f"{train_split.size} training images < batch {config.batch_size}")

    # Host batches, put on the devices by a background thread ahead of use.
    def train_batches(start_step: int, seed: int):
        it = data.make_train_iter(
            train_split,
            global_batch=config.batch_size,
            seed=seed,
            start_step=start_step,
            **train_kwargs,
        )
        batches = sharding.Prefetch(it, mesh)
        return lambda step: next(batches)

    def eval_batches():
        local = data.make_eval_iter(eval_split, global_batch=config.eval_batch_size, **eval_kwargs)
        return sharding.Prefetch(local, mesh)

    return steps_per_epoch, train_batches, eval_batches, eval_split.gt()


def _backbone_loader(model: rcnn.FasterRCNN, path: str, tx: Any):
    """A `prepare_state` hook that puts ImageNet ResNet weights into the state's backbone."""
    from luminet_jax import teachers  # noqa: PLC0415
    from luminet_jax.detection import convert  # noqa: PLC0415

    path = teachers.local_file(path, option=teachers.BACKBONE_OPTION)  # zoo:NAME -> its file
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.student.backbone_checkpoint {path} does not exist.")
    state_dict = convert.load_state_dict(path)

    def prepare(state: state_lib.TrainState) -> state_lib.TrainState:
        variables = jax.device_get(steps.variables_of(state))
        loaded = convert.load_backbone(model, variables, state_dict)
        logging.info("Student backbone from %s", path)
        return state_lib.create_train_state(
            {"params": loaded["params"], "batch_stats": loaded["frozen"]}, tx
        )

    return prepare
