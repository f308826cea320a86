"""The detection benchmarks' pinned detector sizes are the configs' (the benchmarks import
without ml_collections, so they repeat the fields; this keeps the two in step)."""

import importlib

import pytest

from benchmarks import detection_step

# size -> (config module, config arg, section whose detector fields the size pins)
PINNED = {
    "tiny": ("detection_smoke", None, "student"),
    "tb_student": ("tiny_boxes_frcnn", "vanilla", "student"),
    "tb_teacher": ("tiny_boxes_frcnn", "teacher", "student"),
    "t4_student": ("tiny_boxes_table4", "vanilla", "student"),
    "t4_teacher": ("tiny_boxes_table4", "teacher", "student"),
}


@pytest.mark.parametrize("size", sorted(PINNED))
def test_pinned_detector_fields_are_the_configs(size):
    module, arg, section = PINNED[size]
    config = importlib.import_module(f"configs.{module}").get_config(arg)
    name, fields, side, _ = detection_step.SIZES[size]
    assert name == config[section].name
    assert {k: config[section][k] for k in fields} == fields
    # Every FasterRCNN field the config sets that a training step uses is pinned.
    unpinned = set(config[section]) - set(fields) - {"name", "backbone_checkpoint"}
    assert unpinned <= {"score_thresh"}, unpinned  # eval-only
    assert max(config.dataset.pad_size) == side


def test_reduced_table4_teacher_in_distillation_is_the_pinned_teacher():
    student = importlib.import_module("configs.tiny_boxes_table4").get_config("luminet")
    _, fields, _, _ = detection_step.SIZES["t4_teacher"]
    merged = {**student.student, **student.teacher}
    # The network's widths (RoI sampling is the student's in distillation: its RoIs are used).
    widths = ("stem_channels", "fpn_channels", "fc_dim", "freeze_at")
    assert {k: merged[k] for k in widths} == {k: fields[k] for k in widths}


def test_flops_benchmark_pins_the_coco_configs_sizes():
    from benchmarks import detection_flops as flops

    ds = importlib.import_module("configs.coco_frcnn_r101_r18").get_config("luminet").dataset
    assert tuple(tuple(p) for p in ds.pad_sizes) == flops.PAD_SIZES
    assert tuple(ds.pad_size) == flops.SQUARE and ds.max_gt == flops.MAX_GT
    assert (max(ds.short_sides), ds.max_size) == (flops.SHORT_SIDE, flops.MAX_SIZE)
    assert sum(flops.COCO_SAMPLE.values()) == 159
    shares = flops.bucket_shares()
    assert sum(shares) == pytest.approx(1.0) and min(shares) > 0
