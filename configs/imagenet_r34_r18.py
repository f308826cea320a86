"""ResNet34 -> ResNet18 on ImageNet-1k (DESIGN.md section 3).

Teacher: torchvision's pretrained resnet34 (73.31), by default `zoo:resnet34` (fetched, checked
and converted once by the teacher zoo: luminet-teachers); --config.teacher.checkpoint=PATH
gives another one. ImageNet itself is a manual download (TFDS imagenet2012).

python -m luminet_jax.main --config configs/imagenet_r34_r18.py:method=luminet \
    --config.dataset.data_dir=TFDS_DIR --workdir W

Expected best top-1 of the student after 100 epochs: LumiNet 71.78 (paper; 72.16 in the
TMLR version); KD 70.66, DKD 71.70, vanilla 69.75 (DKD paper). Feature-based rows of Table 2:
at, ofd, reviewkd (mdistiller's values; ReviewKD and OFD with their own batch and lr).
"""

from luminet_jax import config_features
from luminet_jax import config_lib as common

METHODS = {  # From the reference YAMLs; keys = get_distiller kwargs.
    "vanilla": dict(name="vanilla"),
    "kd": dict(name="kd", ce_weight=0.5, kd_weight=0.5, temperature=1.0),
    # mdistiller configs/imagenet/*/dkd.yaml: beta 0.5, T 1, warmup 1, alpha its default 1.
    "dkd": dict(name="dkd", ce_weight=1.0, alpha=1.0, beta=0.5, temperature=1.0, warmup_epochs=1),
    "luminet": dict(
        name="luminet", ce_weight=1.0, alpha=2.0, temperature=0.7, warmup_epochs=1, stats_groups=1
    ),
}
# Feature-based rows. AT: mdistiller's imagenet/r34_r18/at.yaml (its defaults, the pair's
# recipe). ReviewKD: mdistiller's imagenet/r34_r18/reviewkd.yaml (pre-ReLU student maps,
# warmup 1, batch 256, lr 0.1). OFD (no mdistiller YAML for this pair): OFD's ImageNet
# script, loss_distill / batch / 10000 = weight 1e-4, batch 256, lr 0.1 (its Nesterov
# momentum is not taken: mdistiller trains every method with plain SGD momentum).
_FEATURES = config_features.feature_methods(
    reviewkd=dict(
        reviewkd_weight=1.0,
        warmup_epochs=1,
        shapes=(1, 7, 14, 28, 56),
        out_shapes=(1, 7, 14, 28, 56),
        in_channels=(64, 128, 256, 512, 512),
        out_channels=(64, 128, 256, 512, 512),
        stu_preact=True,
    ),
    ofd_weight=1e-4,
)
METHODS.update({name: _FEATURES[name] for name in ("at", "ofd", "reviewkd")})
_RECIPES = {  # method -> (global batch, base lr) where its reference differs from the pair's
    "ofd": (256, 0.1),
    "reviewkd": (256, 0.1),
}


def get_config(arg=None):
    """`arg`: `method=NAME` or a bare NAME (default luminet)."""
    arg = common.parse_arg(arg, method="luminet")
    config = common.imagenet()  # batch 512, lr 0.2, 100 epochs, decay 30/60/90, wd 1e-4
    config.student = dict(name="resnet18")
    config.teacher = dict(name="resnet34", checkpoint="zoo:resnet34")
    config.distiller = dict(METHODS[arg.method])
    if arg.method in _RECIPES:
        config.batch_size, config.schedule.base_lr = _RECIPES[arg.method]
    return config
