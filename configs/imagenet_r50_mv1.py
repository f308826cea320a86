"""ResNet50 -> MobileNetV1 on ImageNet-1k (DESIGN.md section 3).

Teacher: torchvision's pretrained resnet50 (76.16), converted to .npz or orbax.

python -m luminet_jax.main --config configs/imagenet_r50_mv1.py:method=luminet \
    --config.teacher.checkpoint=TEACHER --config.dataset.data_dir=TFDS_DIR --workdir W

Expected best top-1 of the student after 100 epochs: LumiNet 72.55 (paper); KD 68.58,
DKD 72.05, vanilla 68.87 (DKD paper).
"""

from luminet_jax import config_lib as common

_METHODS = {  # From the reference YAMLs; keys = get_distiller kwargs.
    "vanilla": dict(name="vanilla"),
    "kd": dict(name="kd", ce_weight=0.5, kd_weight=0.5, temperature=1.0),
    # mdistiller configs/imagenet/*/dkd.yaml: beta 2.0, T 1, warmup 1, alpha its default 1.
    "dkd": dict(name="dkd", ce_weight=1.0, alpha=1.0, beta=2.0, temperature=1.0, warmup_epochs=1),
    "luminet": dict(
        name="luminet", ce_weight=1.0, alpha=2.0, temperature=0.7, warmup_epochs=1, stats_groups=1
    ),
}


def get_config(arg=None):
    """`arg`: `method=NAME` or a bare NAME (default luminet)."""
    arg = common.parse_arg(arg, method="luminet")
    config = common.imagenet()
    config.batch_size = 256
    config.schedule.base_lr = 0.1
    config.student = dict(name="mobilenet_v1")
    config.teacher = dict(name="resnet50", checkpoint="")
    config.distiller = dict(_METHODS[arg.method])
    return config
