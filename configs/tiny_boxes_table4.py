"""The reduced Table 4 pair: Faster R-CNN + FPN on 20 classes of the Tiny-ImageNet boxes (CPU).

experiments/table4_detection/README.md runs it. The set is the first 20 wnids' images only
(2,000 train / 1,000 val Tiny-ImageNet images tiled 2 x 2: 500 / 250 images of 128 x 128):

python -m luminet_jax.detection.tiny_boxes \
    --source ../shared/data/tiny-imagenet-200-mini.tar.gz --out /tmp/tiny-boxes-20 \
    --train 500 --val 250 --classes 20
python -m luminet_jax.main --config configs/tiny_boxes_table4.py:method=teacher \
    --workdir /tmp/t4/teacher
python -m luminet_jax.main --config configs/tiny_boxes_table4.py:method=luminet \
    --config.teacher.checkpoint=/tmp/t4/teacher --workdir /tmp/t4/luminet

The recipe is configs/tiny_boxes_frcnn.py's (SGD 0.9, wd 1e-4, lr 0.01 at batch 8, warmup,
decays at 2/3 and 8/9 of `steps`, clipping at norm 10, score threshold 0.001), with what makes
it learn on 2 CPU cores in minutes instead of hours:
- 20 classes instead of 200 (DESIGN.md section 7 allows fewer classes);
- the whole backbone trained (freeze_at 0): detectron2 freezes the stem and res2
  (FREEZE_AT 2), which only makes sense for an ImageNet-pretrained backbone; from scratch the
  frozen stages would stay random;
- student: R-18 at quarter width (stem 16), FPN 32, box head 2 x FC 128, 32 RoIs per image;
- teacher ("method=teacher", trained alone): R-18 at half width (stem 32), FPN 64, box head
  2 x FC 256. In distillation its box head runs on the student's 32 sampled RoIs per image.

Expected AP scale (measured, 1,500 steps): COCO AP 8-12 points, AP50 about twice that
(student alone ~8, teacher ~11.5); the point is the ordering of the methods against the
seed-to-seed spread, not the absolute value.
"""

from configs import tiny_boxes_frcnn
from luminet_jax import config_lib as common

STUDENT = dict(stem_channels=16, fpn_channels=32, fc_dim=128, roi_batch_size_per_image=32)
TEACHER = dict(stem_channels=32, fpn_channels=64, fc_dim=256)


def get_config(arg=None):
    """`arg`: `method=vanilla|kd|dkd|luminet|teacher` (default vanilla), `data=DIR`,
    `steps=S` (default 1500)."""
    arg = common.parse_arg(arg, method="vanilla", data="/tmp/tiny-boxes-20", steps=1500)
    config = tiny_boxes_frcnn.get_config(f"method={arg.method},data={arg.data},steps={arg.steps}")
    # Reference: detectron2's FREEZE_AT 2 suits a pretrained backbone only; from scratch all train.
    config.student.freeze_at = 0
    if arg.method == "teacher":
        config.student.update(TEACHER)
    else:
        config.student.update(STUDENT)
        config.teacher.update(TEACHER, freeze_at=0)
    return config
