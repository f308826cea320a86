"""Faster R-CNN + FPN on the Tiny-ImageNet boxes set, sized for CPUs (DESIGN.md section 7).

The set (128 x 128 images, each four tiled 64 x 64 Tiny-ImageNet images with their real
boxes, 200 classes) is built by luminet_jax.detection.tiny_boxes:

python -m luminet_jax.detection.tiny_boxes \
    --source ../shared/data/tiny-imagenet-200-mini.tar.gz --out /tmp/tiny-boxes \
    --train 4000 --val 500
python -m luminet_jax.main --config configs/tiny_boxes_frcnn.py:method=teacher \
    --workdir /tmp/tb/teacher
python -m luminet_jax.main --config configs/tiny_boxes_frcnn.py:method=luminet \
    --config.teacher.checkpoint=/tmp/tb/teacher --workdir /tmp/tb/luminet

`data=DIR` points at another build. Reduced scale, as DESIGN.md allows (and says): no
ImageNet backbone (trained from scratch), the images padded to 128, RPN top-k 256 / 128
proposals, 64 RoIs per image (25% foreground), box head 2 x FC 256, FPN 64 channels; the
student is an R-18 at half width (stem 32), the teacher ("method=teacher", vanilla) a
full-width R-18. Both use the same recipe shape as COCO's (SGD 0.9, wd 1e-4, linear
warmup, two step decays), at batch 8 and lr 0.01 with gradients clipped to norm 10, for
`steps=S` iterations (default 2000).

Expected AP scale: low. From scratch, with 80 train boxes per class and a few thousand
iterations on a CPU, COCO AP is ~0.00 at the first evaluation and of order 0.01-0.05 (AP50
a few times higher) after a few thousand iterations; it is a sanity check that the whole
pipeline learns, not a benchmark (see benchmarks/README.md, "Detection sanity run").
"""

from luminet_jax import config_lib as common

# Detector fields shared by student and teacher (the teacher section overrides the width).
_DETECTOR = dict(
    stem_channels=32,
    fpn_channels=64,
    fc_dim=256,
    rpn_pre_nms_topk_train=256,
    rpn_pre_nms_topk_test=256,
    rpn_post_nms_topk_train=128,
    rpn_post_nms_topk_test=128,
    rpn_batch_size_per_image=128,
    roi_batch_size_per_image=64,
    # Reference: detectron2 tests at score > 0.05. Here 0.001: a young 200-class detector
    # gives every foreground class < 0.05 for thousands of iterations, which would make its
    # AP exactly 0 (no detections) instead of measuring how it ranks its boxes.
    score_thresh=0.001,
)
# LumiNet on ImageNet's values (alpha 2, T 0.7); detection ones are unpublished.
METHODS = common.detection_methods(luminet=dict(alpha=2.0, temperature=0.7))


def get_config(arg=None):
    """`arg`: `method=vanilla|kd|dkd|luminet|teacher` (default vanilla), `data=DIR`,
    `steps=S`."""
    arg = common.parse_arg(arg, method="vanilla", data="/tmp/tiny-boxes", steps=2000)
    if arg.method not in (*METHODS, "teacher"):
        raise ValueError(f"Unknown method {arg.method!r}; known: teacher, {sorted(METHODS)}")
    config = common.detection()
    config.dataset.update(
        name=f"coco_dir:{arg.data}",
        pad_size=(128, 128),
        pad_sizes=(),  # square 128 x 128 images: one size
        max_gt=8,
        short_sides=(96, 112, 128),
        max_size=128,
        test_short_side=128,
        test_max_size=128,
        num_workers=4,
    )
    config.eval_batch_size = 8
    config.num_train_steps = arg.steps
    # From scratch, FrozenBatchNorm normalizes nothing: clip the gradients (detectron2's
    # SOLVER.CLIP_GRADIENTS) so the unnormalized ResNet does not diverge.
    config.optim.clip_grad_norm = 10.0
    config.schedule.update(
        base_lr=0.01,
        decay_steps=(arg.steps * 2 // 3, arg.steps * 8 // 9),
        warmup_steps=min(200, arg.steps // 10),
    )
    config.student = dict(name="faster_rcnn_r18_fpn", backbone_checkpoint="", **_DETECTOR)
    config.teacher = dict(name="faster_rcnn_r18_fpn", checkpoint="", stem_channels=64)
    method = "vanilla" if arg.method == "teacher" else arg.method
    config.distiller = dict(METHODS[method])
    if arg.method == "teacher":
        config.student.stem_channels = 64
        config.teacher = dict(name="", checkpoint="")
    config.log_every_steps = 20
    config.eval_every_steps = max(1, arg.steps // 8)
    config.ckpt_every_steps = max(1, arg.steps // 12)
    config.keep_checkpoints = 2
    config.eval_teacher = True
    return config
