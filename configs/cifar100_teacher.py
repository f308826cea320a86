"""Vanilla (cross-entropy) training of any CIFAR-100 model, e.g. a teacher.

python -m luminet_jax.main --config configs/cifar100_teacher.py:resnet32x4 --workdir W

ViT teachers take a patch size: `configs/cifar100_teacher.py:model=deit_small,patch_size=4`.
The workdir can then be given to a pair config as --config.teacher.checkpoint=W.
Expected best test top-1 after 240 epochs (mdistiller's public teachers): resnet56 72.34,
resnet110 74.31, resnet32x4 79.42, wrn_40_2 75.61, vgg13 74.64, resnet50_cifar 79.34.
"""

from luminet_jax import config_lib as common

_VIT_PATCH = {"deit_tiny": 16, "deit_small": 16, "vit_compact": 4}  # the models' defaults


def get_config(arg=None):
    """`arg`: `model=NAME` or a bare model NAME (default resnet32x4); `patch_size=P` (ViTs)."""
    arg = common.parse_arg(arg, model="resnet32x4", base_lr=0.05, patch_size=0)
    config = common.base()
    config.student = dict(name=arg.model)
    if arg.model in _VIT_PATCH:  # a ViT field, overridable as --config.student.patch_size=P
        config.student.patch_size = arg.patch_size or _VIT_PATCH[arg.model]
    elif arg.patch_size:
        raise ValueError(f"patch_size applies to ViTs {sorted(_VIT_PATCH)}, not {arg.model!r}")
    config.teacher = dict(name="", checkpoint="")  # vanilla: no teacher
    config.distiller = dict(name="vanilla")
    config.schedule.base_lr = arg.base_lr
    return config
