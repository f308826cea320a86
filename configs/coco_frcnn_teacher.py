"""Vanilla Faster R-CNN + FPN on COCO 2017 (detectron2's 3x schedule), e.g. a teacher.

python -m luminet_jax.main --config configs/coco_frcnn_teacher.py:r101 \
    --config.student.backbone_checkpoint=zoo:msra_r101 --config.dataset.data_dir=TFDS_DIR \
    --workdir T

`model=r18|r50|r101` (default r101). The 3x schedule: 270k iterations at batch 16, lr 0.02,
decays at 210k and 250k, 1000-iteration warmup; backbone from ImageNet (detectron2's C2
MSRA pickles, `R-50.pkl` / `R-101.pkl`, BGR with std 1: --config.dataset.bgr=true
--config.dataset.std=1,1,1; mean and std are given in RGB order, and the default mean is
already MSRA's 103.53 / 116.28 / 123.675 in BGR; the teacher zoo fetches them as
`zoo:msra_r50` / `zoo:msra_r101`, and torchvision's R-18, for RGB input, as `zoo:resnet18`).
The workdir T can then be given as --config.teacher.checkpoint=T to
configs/coco_frcnn_r101_r18.py, instead of the model zoo's checkpoint. Expected box AP
(detectron2's model zoo): R-50 40.2, R-101 42.0.
"""

from luminet_jax import config_lib as common

_DEPTHS = {
    "r18": "faster_rcnn_r18_fpn",
    "r50": "faster_rcnn_r50_fpn",
    "r101": "faster_rcnn_r101_fpn",
}


def get_config(arg=None):
    """`arg`: `model=r18|r50|r101` or a bare name (default r101)."""
    arg = common.parse_arg(arg, model="r101")
    if arg.model not in _DEPTHS:
        raise ValueError(f"Unknown model {arg.model!r}; known: {sorted(_DEPTHS)}")
    config = common.detection(batch_size=16, eval_batch_size=8, num_train_steps=270_000)
    config.schedule.update(base_lr=0.02, decay_steps=(210_000, 250_000))
    config.student = dict(name=_DEPTHS[arg.model], backbone_checkpoint="")
    config.teacher = dict(name="", checkpoint="")
    config.distiller = dict(name="vanilla")
    return config
