"""Vanilla (cross-entropy) training of any CIFAR-100 model, e.g. a teacher.

python -m luminet_jax.main --config configs/cifar100_teacher.py:resnet32x4 --workdir W

The workdir can then be given to a pair config as --config.teacher.checkpoint=W.
Expected best test top-1 after 240 epochs (mdistiller's public teachers): resnet56 72.34,
resnet110 74.31, resnet32x4 79.42, wrn_40_2 75.61, vgg13 74.64, resnet50_cifar 79.34.
"""

from configs import common


def get_config(arg=None):
    """`arg`: `model=NAME` or a bare model NAME (default resnet32x4)."""
    arg = common.parse_arg(arg, model="resnet32x4", base_lr=0.05)
    config = common.base()
    config.student = dict(name=arg.model)
    config.teacher = dict(name="", checkpoint="")  # vanilla: no teacher
    config.distiller = dict(name="vanilla")
    config.schedule.base_lr = arg.base_lr
    return config
