"""Model zoo: one registry of Flax classifiers, looked up by name.

Every model is a `flax.linen.Module` with

    module.apply(variables, images_nhwc, train=False) -> (logits, feats)

where `feats` is a dict with "stem", "stage1".."stageN" and "pooled" entries; every CNN
also has "stage{i}_preact" for every stage, mdistiller's `preact_feats[i]` (the stage output
before its final ReLU, family by family as DESIGN.md section 6 and each model's docstring
define it). mdistiller's `preact_feats[0]` is its stem feature itself for the CIFAR models
(the same tensor as `feats[0]`), so it is `feats["stem"]` here and there is no
"stem_preact"; `bn_before_relu(model, variables)` gives, per stage, the BatchNorm whose
output feeds that ReLU (OFD's margins). Models take `num_classes`, `dtype` (compute dtype;
None = the inputs' dtype) and `axis_name` (synchronized BatchNorm inside the sharded step).
"""

from __future__ import annotations

import flax.linen as nn

from luminet_jax.models import (
    cifar_resnet,
    cifar_resnet50,
    cohort,
    ensemble,
    mobilenet_v1,
    mobilenet_v2,
    resnet,
    shufflenet_v1,
    shufflenet_v2,
    vgg,
    vit,
    wrn,
)

# name -> constructor (a Module class or a functools.partial of one).
MODELS = {
    # CIFAR (32x32), mdistiller's architectures.
    "resnet8": cifar_resnet.ResNet8,
    "resnet14": cifar_resnet.ResNet14,
    "resnet20": cifar_resnet.ResNet20,
    "resnet32": cifar_resnet.ResNet32,
    "resnet44": cifar_resnet.ResNet44,
    "resnet56": cifar_resnet.ResNet56,
    "resnet110": cifar_resnet.ResNet110,
    "resnet8x4": cifar_resnet.ResNet8x4,
    "resnet20x4": cifar_resnet.ResNet20x4,  # not in mdistiller: TAKD's assistant
    "resnet32x4": cifar_resnet.ResNet32x4,
    "wrn_16_1": wrn.WRN16x1,
    "wrn_16_2": wrn.WRN16x2,
    "wrn_40_1": wrn.WRN40x1,
    "wrn_40_2": wrn.WRN40x2,
    "vgg8": vgg.VGG8,
    "vgg11": vgg.VGG11,
    "vgg13": vgg.VGG13,
    "vgg16": vgg.VGG16,
    "vgg19": vgg.VGG19,
    "shufflenet_v1": shufflenet_v1.ShuffleNetV1,
    "shufflenet_v2": shufflenet_v2.ShuffleNetV2,
    "mobilenet_v2": mobilenet_v2.MobileNetV2,
    "resnet50_cifar": cifar_resnet50.ResNet50Cifar,
    # ImageNet (224x224), torchvision layouts.
    "resnet18": resnet.ResNet18,
    "resnet34": resnet.ResNet34,
    "resnet50": resnet.ResNet50,
    "mobilenet_v1": mobilenet_v1.MobileNetV1,
    # Vision transformers.
    "deit_tiny": vit.DeiTTiny,
    "deit_small": vit.DeiTSmall,
    "vit_compact": vit.ViTCompact,
}

# mdistiller's model keys (and a few other spellings) -> our names.
ALIASES = {
    "ResNet50": "resnet50_cifar",
    "ShuffleV1": "shufflenet_v1",
    "ShuffleV2": "shufflenet_v2",
    "MobileNetV2": "mobilenet_v2",
    "mobile_half": "mobilenet_v2",
    "vgg8_bn": "vgg8",
    "vgg11_bn": "vgg11",
    "vgg13_bn": "vgg13",
    "vgg16_bn": "vgg16",
    "vgg19_bn": "vgg19",
    "ResNet18": "resnet18",
    "ResNet34": "resnet34",
    "MobileNetV1": "mobilenet_v1",
}

# Input resolution each model is built for (used for init and conversion).
_IMAGENET = {"resnet18", "resnet34", "resnet50", "mobilenet_v1", "deit_tiny", "deit_small"}
INPUT_SIZES = {name: (224 if name in _IMAGENET else 32) for name in MODELS}


def canonical_name(name: str) -> str:
    """Resolves an alias; raises KeyError listing the known names for an unknown one."""
    name = ALIASES.get(name, name)
    if name not in MODELS:
        raise KeyError(
            f"Unknown model {name!r}; known: {sorted(MODELS)} (aliases: {sorted(ALIASES)})"
        )
    return name


def get_model(name: str, *, num_classes: int, peers: str = "", **kwargs) -> nn.Module:
    """Builds a registered model.

    Args:
      name: a key of MODELS or ALIASES.
      num_classes: size of the classifier.
      peers: comma-separated model names trained beside `name` (deep mutual learning):
        non-empty builds a `cohort.Cohort` of `name` (member 0) and the peers, each with
        the same `num_classes` and `kwargs`; its feats add "cohort_logits" (N, B, C).
      **kwargs: module fields, e.g. `dtype` (compute dtype) and `axis_name`.

    Returns:
      An unbound flax module whose `apply(variables, x, train=...)` gives (logits, feats).
    """
    peer_names = [p.strip() for p in str(peers or "").split(",") if p.strip()]
    if peer_names:
        members = [get_model(n, num_classes=num_classes, **kwargs) for n in [name, *peer_names]]
        return cohort.Cohort(members=tuple(members))
    return MODELS[canonical_name(name)](num_classes=num_classes, **kwargs)


def input_size(name: str) -> int:
    """The square input resolution `name` is built for (32 for CIFAR, 224 for ImageNet)."""
    return INPUT_SIZES[canonical_name(name)]


def bn_before_relu(model: nn.Module, variables) -> list[dict]:
    """Per stage, the BatchNorm whose output feeds the stage's final ReLU (OFD's margins).

    Args:
      model: a CNN of MODELS (as returned by `get_model`).
      variables: its {"params", "batch_stats"}.

    Returns:
      One dict per stage in order (stage1, stage2, ...), with "scale", "bias", "mean" and
      "var" arrays of shape (C,), C the channels of feats["stage{i}_preact"].

    Raises:
      ValueError: for a model without BatchNorms before its stage ReLUs (the ViTs, an
        ensemble), naming the model.
    """
    method = getattr(model, "bn_before_relu", None)
    if method is None:
        names = [n for n, ctor in MODELS.items() if getattr(ctor, "func", ctor) is type(model)]
        raise ValueError(
            f"bn_before_relu: model {type(model).__name__} "
            f"({', '.join(names) if names else 'not in MODELS'}) has no BatchNorm feeding a "
            "ReLU at the end of its stages; only the CNNs of the zoo have one"
        )
    return method(variables)


def make_ensemble(teachers) -> nn.Module:
    """A teacher ensemble whose logits are the mean of its teachers' logits."""
    return ensemble.Ensemble(teachers=tuple(teachers))


# Imported last: torch_convert looks models up through this module at call time.
from luminet_jax.models import torch_convert  # noqa: E402

from_torch = torch_convert.from_torch
