"""CIFAR ResNets (mdistiller's `resnet.py`): resnet8..110, resnet8x4, resnet32x4.

A 3x3 conv stem, three stages of BasicBlocks (strides 1, 2, 2) and a linear classifier on
the globally pooled features. A block gets a 1x1-conv + BatchNorm projection shortcut
whenever its stride or width changes, so resnet8x4 projects 32 -> 64 in its first stage.
Submodule names follow the PyTorch reference (`conv1`, `bn1`, `layer1_0/conv1`,
`layer1_0/downsample_0`, `fc`), so `torch_convert` maps them with its generic rule.

feats: "stem", "stage1".."stage3" (mdistiller's `feats`), "stage{i}_preact" (its
`preact_feats[i]`: the stage's last block before its final ReLU, `bn2(conv2(.)) + shortcut`)
and "pooled". `bn_before_relu` gives each stage's last `bn2`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from luminet_jax.models import layers


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus (projected) shortcut, then ReLU.

    Returns (output, pre-activation): the ReLU's output and its input.
    """

    planes: int
    stride: int
    conv: Any  # layers.conv with dtype bound
    norm: Any  # layers.batch_norm partial

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = self.conv(self.planes, 3, self.stride, name="conv1")(x)
        out = nn.relu(self.norm(name="bn1")(out))
        out = self.conv(self.planes, 3, 1, name="conv2")(out)
        out = self.norm(name="bn2")(out)
        residual = x
        if self.stride != 1 or x.shape[-1] != self.planes:
            residual = self.conv(self.planes, 1, self.stride, name="downsample_0")(x)
            residual = self.norm(name="downsample_1")(residual)
        preact = out + residual
        return nn.relu(preact), preact


class CifarResNet(nn.Module):
    """mdistiller's CIFAR ResNet.

    Attributes:
      depth: 6n + 2 (n BasicBlocks per stage).
      num_filters: (stem, stage1, stage2, stage3) widths.
      num_classes: classifier size.
      dtype: compute dtype (None: the inputs' dtype).
      param_dtype: parameter dtype.
      axis_name: BatchNorm synchronization axis (None: local batch statistics).
    """

    depth: int
    num_filters: Sequence[int]
    num_classes: int
    dtype: Any = None
    param_dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        x, dtype, conv, norm = layers.opening(self, x, train=train)
        n = (self.depth - 2) // 6
        feats = {}
        x = conv(self.num_filters[0], 3, 1, name="conv1")(x)
        x = nn.relu(norm(name="bn1")(x))
        feats["stem"] = x
        for stage, (planes, stride) in enumerate(zip(self.num_filters[1:], (1, 2, 2)), start=1):
            for i in range(n):
                x, preact = BasicBlock(
                    planes, stride if i == 0 else 1, conv, norm, name=f"layer{stage}_{i}"
                )(x)
            feats[f"stage{stage}"] = x
            feats[f"stage{stage}_preact"] = preact
        # Reference: AvgPool2d(8) on the 8x8 map; a global mean is the same at 32x32.
        logits = layers.pooled_classifier(
            x, feats, self.num_classes, dtype=dtype, param_dtype=self.param_dtype, name="fc"
        )
        return logits, feats

    @nn.nowrap
    def bn_before_relu(self, variables) -> list[dict[str, jax.Array]]:
        """Per stage, the BatchNorm feeding its final ReLU: the last block's `bn2`."""
        last = (self.depth - 2) // 6 - 1
        return [
            layers.batch_norm_variables(variables, (f"layer{stage}_{last}", "bn2"))
            for stage in (1, 2, 3)
        ]


_SMALL = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)

ResNet8 = functools.partial(CifarResNet, depth=8, num_filters=_SMALL)
ResNet14 = functools.partial(CifarResNet, depth=14, num_filters=_SMALL)
ResNet20 = functools.partial(CifarResNet, depth=20, num_filters=_SMALL)
ResNet32 = functools.partial(CifarResNet, depth=32, num_filters=_SMALL)
ResNet44 = functools.partial(CifarResNet, depth=44, num_filters=_SMALL)
ResNet56 = functools.partial(CifarResNet, depth=56, num_filters=_SMALL)
ResNet110 = functools.partial(CifarResNet, depth=110, num_filters=_SMALL)
ResNet8x4 = functools.partial(CifarResNet, depth=8, num_filters=_WIDE)
ResNet20x4 = functools.partial(CifarResNet, depth=20, num_filters=_WIDE)  # TAKD's assistant
ResNet32x4 = functools.partial(CifarResNet, depth=32, num_filters=_WIDE)
