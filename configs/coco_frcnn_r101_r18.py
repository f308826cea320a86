"""Faster R-CNN R-101-FPN -> R-18-FPN on COCO 2017 (the paper's Table 4; DESIGN.md section 7).

mdistiller's detection recipe (detectron2, from ReviewKD's code): batch 8, lr 0.01, 180k
iterations, decays at 120k and 160k, 1000-iteration linear warmup, SGD momentum 0.9, weight
decay 1e-4; train short side 640..800 (max 1333) + flip, test 800. Distillation is on the
RoI box head's class logits, the teacher run on the student's sampled RoIs
(luminet_jax/detection/distill.py); every distiller's ce_weight is 0 (the RoI head's
cross-entropy is already the detector's loss).

python -m luminet_jax.main --config configs/coco_frcnn_r101_r18.py:method=luminet \
    --config.dataset.data_dir=TFDS_DIR --workdir W

Teacher: detectron2's model zoo faster_rcnn_R_101_FPN_3x (`model_final_f6e8b1.pkl`, 42.0 AP),
by default `zoo:faster_rcnn_r101_fpn` (fetched and checked once by the teacher zoo:
luminet-teachers), or --config.teacher.checkpoint=PATH: that .pkl or a detection run's
workdir (configs/coco_frcnn_teacher.py, trained with the same BGR input);
its images are renormalized from the student's RGB ones in the step (config.teacher.mean /
std / bgr; for a teacher trained on RGB input set --config.teacher.bgr=false and its std).
Student backbone: torchvision's ImageNet ResNet-18, by default `zoo:resnet18`
(`resnet18-f37072fd.pth`, converted as detectron2's convert-torchvision-to-d2 does;
--config.student.backbone_checkpoint=PATH gives another one). COCO from TFDS `coco/2017`
(array_record, a manual download), or `--config.dataset.name=coco_dir:/data/coco`.

Methods: vanilla, kd, dkd, luminet (default). DKD: alpha 1, beta 0.25, T 1, no warmup
(mdistiller's). LumiNet: alpha 2, T 0.7, its ImageNet values: its detection hyperparameters
are unpublished. KD: weight 1, T 1.

Expected COCO AP (R-101 -> R-18, as the DKD paper reports it): teacher 42.04, student alone
33.26, KD 33.97, DKD 35.05; LumiNet: the LumiNet paper's Table 4.
"""

from luminet_jax import config_lib as common

METHODS = common.detection_methods(luminet=dict(alpha=2.0, temperature=0.7))


def get_config(arg=None):
    """`arg`: `method=NAME` or a bare NAME (vanilla, kd, dkd, luminet; default luminet)."""
    arg = common.parse_arg(arg, method="luminet")
    if arg.method not in METHODS:
        raise ValueError(f"Unknown method {arg.method!r}; this file defines {sorted(METHODS)}")
    config = common.detection()  # batch 8, lr 0.01, 180k its, steps 120k/160k, warmup 1000
    config.student = dict(
        name="faster_rcnn_r18_fpn",
        backbone_checkpoint="zoo:resnet18",
        # torchvision's R-18 (BasicBlocks: the stride sits on the 3x3 either way).
        stride_in_1x1=False,
    )
    # The teacher's pixels as detectron2's MSRA R-101 takes them (BGR, std 1; mean and std in
    # RGB order as the dataset's); the student's are torchvision's (the dataset section).
    config.teacher = dict(
        name="faster_rcnn_r101_fpn",
        checkpoint="zoo:faster_rcnn_r101_fpn",
        stride_in_1x1=True,
        mean=common.detection().dataset.mean,
        std=(1.0, 1.0, 1.0),
        bgr=True,
    )
    config.distiller = dict(METHODS[arg.method])
    return config
