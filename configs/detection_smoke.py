"""Detection smoke run: a tiny Faster R-CNN on the shipped Tiny-ImageNet boxes sample.

python -m luminet_jax.main --config configs/detection_smoke.py --workdir /tmp/det_smoke

Trains `steps=S` (default 16) iterations on the 64 sample images (batch 8), evaluates COCO
box AP on the 32 val images at the middle and the end (eval/AP ... in metrics.jsonl) and
checkpoints; a second call resumes. A few minutes on 2 CPU cores, most of it compiling the
train and predict steps. Tiny widths throughout: the AP is ~0, it checks the plumbing.
"""

from luminet_jax import config_lib as common


def get_config(arg=None):
    """`arg`: `steps=S` (default 16)."""
    arg = common.parse_arg(arg, steps=16)
    config = common.detection()
    config.dataset.update(
        name="tiny_boxes_sample",
        pad_size=(128, 128),
        pad_sizes=(),  # square 128 x 128 images: one size
        max_gt=4,
        short_sides=(96, 128),
        max_size=128,
        test_short_side=128,
        test_max_size=128,
        num_workers=2,
    )
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_train_steps = arg.steps
    config.optim.clip_grad_norm = 5.0  # from scratch (FrozenBatchNorm is an identity)
    config.schedule.update(
        base_lr=0.01, decay_steps=(arg.steps * 3 // 4,), warmup_steps=min(4, arg.steps)
    )
    config.student = dict(
        name="faster_rcnn_r18_fpn",
        backbone_checkpoint="",
        stem_channels=8,
        fpn_channels=16,
        fc_dim=32,
        rpn_pre_nms_topk_train=64,
        rpn_pre_nms_topk_test=64,
        rpn_post_nms_topk_train=32,
        rpn_post_nms_topk_test=64,
        rpn_batch_size_per_image=32,
        roi_batch_size_per_image=16,
    )
    config.teacher = dict(name="", checkpoint="")
    config.distiller = dict(name="vanilla")
    config.log_every_steps = 4
    config.eval_every_steps = max(1, arg.steps // 2)
    config.ckpt_every_steps = max(1, arg.steps // 2)
    config.keep_checkpoints = 2
    return config
