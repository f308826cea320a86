"""Detection through the one training loop (luminet_jax/tasks/, tasks/detection.py, train.py).

Default suite: the task plumbing (config.task selects the task, clear errors for an unknown
task, seeds in one job and feature distillers), the detection configs (every method builds,
DESIGN.md section 7's recipe), the warmup + multi-step schedule, and the start-up checks.
Slow: configs/detection_smoke.py end to end through `train.train_and_evaluate` (the
detector's train step compiles for minutes on CPU): COCO AP in metrics.jsonl, a resume.
"""

from __future__ import annotations

import importlib
import json
import os

import jax
import numpy as np
import pytest

from luminet_jax import cli, distillers, launch, metrics_io, optim, tasks, train
from luminet_jax.detection import rcnn

DETECTION_CONFIGS = {
    "detection_smoke": [None],
    "tiny_boxes_frcnn": ["vanilla", "kd", "dkd", "luminet", "teacher"],
    "tiny_boxes_table4": ["vanilla", "kd", "dkd", "luminet", "teacher"],
    "coco_frcnn_r101_r18": ["vanilla", "kd", "dkd", "luminet"],
    "coco_frcnn_teacher": ["r18", "r50", "r101"],
}


def _load(name: str, arg: str | None = None):
    return importlib.import_module(f"configs.{name}").get_config(arg)


def _smoke(arg=None, **overrides):
    config = _load("detection_smoke", arg)
    for key, value in overrides.items():
        config[key] = value
    return config


def test_task_is_picked_by_config_task():
    assert tasks.task_name(_load("detection_smoke")) == "detection"
    assert tasks.task_name(_load("quickstart", "teacher")) == "classification"  # no field
    config = _smoke()
    config.task = "segmentation"
    with pytest.raises(ValueError, match="Unknown config.task 'segmentation'.*classification"):
        tasks.task_name(config)


@pytest.mark.integration
def test_unknown_task_fails_clearly_in_the_loop(tmp_path):
    config = _smoke()
    config.task = "segmentation"
    with pytest.raises(ValueError, match="Unknown config.task"):
        train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.integration
def test_seeds_in_one_job_are_refused_for_detection(tmp_path):
    with pytest.raises(ValueError, match="not supported for detection"):
        train.train_and_evaluate(_smoke(seeds="0,1"), str(tmp_path))
    assert not os.path.exists(tmp_path / "ckpt")


@pytest.mark.integration
def test_feature_distillers_are_refused_for_detection(tmp_path):
    config = _smoke()
    config.distiller = dict(name="fitnet")
    with pytest.raises(ValueError, match="'fitnet' is not supported for detection"):
        train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize(
    "name,arg", [(n, a) for n, args in DETECTION_CONFIGS.items() for a in args]
)
def test_detection_configs_build(name, arg):
    config = _load(name, arg)
    assert config.task == "detection"
    tasks.check_names(config)
    distiller = distillers.get_distiller(**config.distiller)
    if distiller.uses_teacher:  # DESIGN.md section 7: only the distillation part is added
        assert config.distiller.ce_weight == 0.0
        assert config.teacher.name in rcnn.DETECTORS
    fields = {k: v for k, v in config.student.items() if k not in ("name", "backbone_checkpoint")}
    model = rcnn.get_detector(config.student.name, num_classes=3, **fields)
    assert model.roi_batch_size_per_image > 0
    assert all(s % 32 == 0 for s in config.dataset.pad_size)
    assert max(config.dataset.pad_size) >= config.dataset.max_size
    optim.make_optimizer(learning_rate=0.1, **config.optim)
    lr_fn = optim.make_schedule(**config.schedule, steps_per_epoch=10)
    warmup = config.schedule.warmup_steps
    assert float(lr_fn(warmup)) == pytest.approx(config.schedule.base_lr)
    assert float(lr_fn(0)) < config.schedule.base_lr
    assert config.num_train_steps > 0 and config.eval_every_steps > 0


def test_coco_config_is_the_papers_recipe():
    config = _load("coco_frcnn_r101_r18", "dkd")
    assert config.batch_size == 8 and config.num_train_steps == 180_000
    assert dict(config.schedule) == dict(
        base_lr=0.01,
        decay_steps=(120_000, 160_000),
        decay_rate=0.1,
        warmup_steps=1000,
        warmup_factor=0.001,
    )
    assert dict(config.optim) == dict(
        momentum=0.9, weight_decay=1e-4, nesterov=False, clip_grad_norm=0.0
    )
    assert tuple(config.dataset.short_sides) == (640, 672, 704, 736, 768, 800)
    assert (config.dataset.max_size, config.dataset.test_short_side) == (1333, 800)
    assert (config.student.name, config.teacher.name) == (
        "faster_rcnn_r18_fpn",
        "faster_rcnn_r101_fpn",
    )
    assert dict(config.distiller) == dict(
        name="dkd", ce_weight=0.0, alpha=1.0, beta=0.25, temperature=1.0, warmup_epochs=1
    )
    lumi = _load("coco_frcnn_r101_r18", "luminet").distiller
    assert (lumi.alpha, lumi.temperature, lumi.ce_weight) == (2.0, 0.7, 0.0)
    with pytest.raises(ValueError, match="nope"):
        _load("coco_frcnn_r101_r18", "nope")


def test_warmup_multistep_schedule_is_detectron2s():
    with jax.enable_x64(True):
        lr = optim.make_schedule(
            base_lr=0.01, steps_per_epoch=7, decay_steps=(120, 160), warmup_steps=10
        )
        got = [float(lr(s)) for s in (0, 5, 9, 10, 119, 120, 159, 160, 500)]
    # WarmupMultiStepLR: base * (f (1 - a) + a), a = it / warmup; * 0.1^bisect_right(steps, it).
    want = [0.01 * 0.001, 0.01 * (0.001 * 0.5 + 0.5), 0.01 * (0.001 * 0.1 + 0.9)]
    want += [0.01, 0.01, 0.001, 0.001, 1e-4, 1e-4]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    with pytest.raises(ValueError, match="not both"):
        optim.make_schedule(base_lr=1.0, steps_per_epoch=1, decay_epochs=(2,), decay_steps=(5,))
    # The epoch form is unchanged (no warmup: the same weakly-typed constants).
    epochs = optim.make_schedule(base_lr=0.05, steps_per_epoch=10, decay_epochs=(3,))
    assert float(epochs(19)) == pytest.approx(0.05) and float(epochs(20)) == pytest.approx(0.005)


def test_reduced_table4_pair_trains_every_stage_and_sizes_teacher_above_student():
    teacher_run, student = _load("tiny_boxes_table4", "teacher"), _load("tiny_boxes_table4", "kd")
    assert teacher_run.teacher.name == "" and student.teacher.name == "faster_rcnn_r18_fpn"
    # From scratch nothing is frozen (detectron2's FREEZE_AT 2 would keep a random stem).
    assert teacher_run.student.freeze_at == 0 == student.student.freeze_at
    assert student.teacher.freeze_at == 0
    # The teacher a student distills from is the teacher run's detector, field by field.
    for key in ("stem_channels", "fpn_channels", "fc_dim"):
        assert student.teacher[key] == teacher_run.student[key] > student.student[key], key
    assert student.dataset.name == "coco_dir:/tmp/tiny-boxes-20"
    assert student.num_train_steps == teacher_run.num_train_steps == 1500
    assert _load("tiny_boxes_table4", "method=dkd,steps=90,data=/d").num_train_steps == 90


def test_preflight_checks_detector_names_and_teacher_files(tmp_path):
    config = _load("tiny_boxes_frcnn", "luminet")
    with config.unlocked():
        config.student.name = "faster_rcnn_r7_fpn"
    with pytest.raises(KeyError, match="Unknown detector 'faster_rcnn_r7_fpn'"):
        launch.preflight(config)
    config = _load("tiny_boxes_frcnn", "luminet")
    with pytest.raises(cli.UserError, match="teacher") as error:
        launch.preflight(config)
    assert "detection teacher run" in error.value.hint
    config.teacher.checkpoint = str(tmp_path / "missing")
    with pytest.raises(cli.UserError, match="does not exist"):
        launch.preflight(config)
    launch.preflight(_load("detection_smoke"))  # vanilla: no teacher needed


@pytest.mark.integration
@pytest.mark.slow  # compiles the detector's train and predict steps (minutes on 2 CPU cores)
def test_smoke_config_trains_evaluates_and_resumes(tmp_path):
    workdir = str(tmp_path / "run")
    first = train.train_and_evaluate(_smoke("steps=8"), workdir)  # eval + ckpt every 4
    assert first["steps"] == 8 and first["steps_per_epoch"] == 8
    records = metrics_io.read_metrics(workdir)
    evals = [r for r in records if "eval/AP" in r]
    assert [r["step"] for r in evals] == [4, 8]
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "best_AP"):
        assert all(-1.0 <= r[f"eval/{key}"] <= 1.0 for r in evals), key
    assert all(np.isfinite(r["train/loss"]) for r in records if "train/loss" in r)
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["last_AP"] == evals[-1]["eval/AP"]
    assert summary["best_AP"] == max(r["eval/AP"] for r in evals)
    assert np.isnan(summary["teacher_AP"])  # vanilla: no teacher
    assert "best_top1" not in summary

    resumed = train.train_and_evaluate(_smoke("steps=8", num_train_steps=12), workdir)
    assert resumed["steps"] == 12
    records = metrics_io.read_metrics(workdir)
    train_steps = [r["step"] for r in records if "train/loss" in r]
    assert train_steps == [4, 8, 12]  # resumed at step 8: steps 1..8 were not redone
    assert [r["step"] for r in records if "eval/AP" in r] == [4, 8, 12]
    assert int(jax.device_get(resumed["state"].step)) == 12


def _smoke_detector(**changes):
    config = _load("detection_smoke")
    fields = {k: v for k, v in config.student.items() if k not in ("name", "backbone_checkpoint")}
    return rcnn.get_detector(config.student.name, num_classes=3, **{**fields, **changes})


@pytest.mark.slow  # compiles a detector init (~15 s); the slow KD-teacher run loads one too
def test_teacher_variables_load_from_an_orbax_dir_and_are_checked(tmp_path):
    from luminet_jax import checkpoint
    from luminet_jax.tasks import detection as task

    model = _smoke_detector()
    variables = rcnn.init_variables(model, 0, image_size=(64, 64))
    checkpoint.save_variables(tmp_path / "vars", variables)
    loaded = task.load_detector_variables(str(tmp_path / "vars"), model)
    assert set(loaded) == {"params", "frozen"}
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="detection teacher .*shape"):
        task.load_detector_variables(str(tmp_path / "vars"), _smoke_detector(fc_dim=48))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        task.load_detector_variables(str(tmp_path / "nothing"), model)


@pytest.mark.integration
@pytest.mark.slow  # two runs, the second compiles the teacher and the distillation step
def test_a_detection_workdir_teaches_a_distilled_student(tmp_path):
    teacher_dir = str(tmp_path / "teacher")
    train.train_and_evaluate(_smoke("steps=4"), teacher_dir)
    config = _smoke("steps=4")
    config.distiller = dict(name="kd", ce_weight=0.0, kd_weight=1.0, temperature=1.0)
    config.teacher = dict(name="faster_rcnn_r18_fpn", checkpoint=teacher_dir)
    config.eval_teacher = True
    result = train.train_and_evaluate(config, str(tmp_path / "student"))
    records = metrics_io.read_metrics(str(tmp_path / "student"))
    assert any("train/distill/loss_kd" in r for r in records), sorted(records[0])
    teacher_ap = metrics_io.read_metrics(teacher_dir)[-1]["summary/last_AP"]
    assert result["teacher_AP"] == pytest.approx(teacher_ap)
    assert result["steps"] == 4 and np.isfinite(result["last_AP"])
