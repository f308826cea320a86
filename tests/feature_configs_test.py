"""Every config's feature-based methods fit its pair: `init` on the models' feature shapes.

Abstract shapes only (`jax.eval_shape`): this checks ReviewKD's per-pair channel and shape
lists, FitNet's ConvReg case, OFD's BatchNorms before the ReLUs and every feature key,
against the real models of each pair, without computing anything.
"""

from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp
import pytest

from luminet_jax import config_features, distillers, models

CIFAR_PAIRS = [
    "cifar100_res32x4_res8x4", "cifar100_res56_res20", "cifar100_res110_res32",
    "cifar100_wrn40_2_wrn16_2", "cifar100_wrn40_2_wrn40_1", "cifar100_vgg13_vgg8",
    "cifar100_res32x4_shv1", "cifar100_wrn40_2_shv1", "cifar100_vgg13_mv2",
    "cifar100_res50_mv2", "cifar100_res32x4_shv2",
]  # fmt: skip
IMAGENET = {
    "imagenet_r34_r18": ("at", "ofd", "reviewkd"),
    "imagenet_r50_mv1": ("at", "ofd", "reviewkd"),
}
CASES = [(f, m) for f in CIFAR_PAIRS for m in (*config_features.FEATURE_METHODS, "reviewkd")]
CASES += [(f, m) for f, methods in IMAGENET.items() for m in methods]


@functools.cache
def _pair(student: str, teacher: str, num_classes: int, size: int):
    """(teacher module, abstract teacher variables, student feats, teacher feats)."""
    s_model = models.get_model(student, num_classes=num_classes)
    t_model = models.get_model(teacher, num_classes=num_classes)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)

    def build(x):
        s_vars = s_model.init(jax.random.key(0), x, train=False)
        t_vars = t_model.init(jax.random.key(1), x, train=False)
        return (
            t_vars,
            s_model.apply(s_vars, x, train=False)[1],
            t_model.apply(t_vars, x, train=False)[1],
        )

    return (t_model, *jax.eval_shape(build, x))


@pytest.mark.parametrize("name,method", CASES)
@pytest.mark.integration  # heavy: the second tier
def test_feature_method_fits_the_pair(name, method):
    config = importlib.import_module(f"configs.{name}").get_config(f"method={method}")
    assert config.distiller.name == method
    distiller = distillers.get_distiller(**config.distiller)
    assert distiller.uses_feats and distiller.uses_teacher
    imagenet = name.startswith("imagenet")
    teacher, t_vars, s_feats, t_feats = _pair(
        config.student.name, config.teacher.name, 1000 if imagenet else 100, 224 if imagenet else 32
    )
    out = jax.eval_shape(
        lambda tv, s, t: distiller.init(
            jax.random.key(0), s, t, teacher_variables=tv, teacher=teacher, num_train=50_000
        ),
        t_vars, s_feats, t_feats,
    )  # fmt: skip
    extra = sum(a.size for a in jax.tree.leaves(out.get("params", {})))
    assert (extra > 0) == (method in ("fitnet", "vid", "ofd", "reviewkd"))
