"""ImageNet ResNets in torchvision's layout: resnet18, resnet34, resnet50 (v1.5).

7x7/2 stem conv, BatchNorm, ReLU, 3x3/2 max-pool, four stages (strides 1, 2, 2, 2) of
BasicBlocks or Bottlenecks (stride on the 3x3 conv), global pooling and `fc`. Names follow
torchvision (`conv1`, `bn1`, `layer1_0/conv1`, `layer1_0/downsample_0`, ...), so torchvision
state_dicts convert with torch_convert's generic rule.

feats: "stem" (after the max-pool), "stage1".."stage4", "stage{i}_preact" (mdistiller's
`preact_feats[i]`: the stage's last block before its final ReLU, `bn2`/`bn3` output plus
shortcut) and "pooled". `bn_before_relu` gives each stage's last `bn2` (BasicBlock) or `bn3`
(Bottleneck).
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
    """torchvision BasicBlock (expansion 1); returns (output, pre-activation)."""

    planes: int
    stride: int
    conv: Any
    norm: Any
    shortcut: str = "downsample"  # the projection's names: `{shortcut}_0` conv, `_1` BN

    expansion = 1
    last_bn = "bn2"  # the BatchNorm whose output (plus shortcut) feeds the final ReLU

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = nn.relu(
            self.norm(name="bn1")(self.conv(self.planes, 3, self.stride, name="conv1")(x))
        )
        out = self.norm(name="bn2")(self.conv(self.planes, 3, 1, name="conv2")(out))
        preact = out + _shortcut(self, x, self.planes)
        return nn.relu(preact), preact


class Bottleneck(nn.Module):
    """torchvision Bottleneck (v1.5: stride on the 3x3 conv, expansion 4); also mdistiller's
    CIFAR ResNet50's (`shortcut="shortcut"`, `models.cifar_resnet50`).

    Returns (output, pre-activation): the final ReLU's output and its input.
    """

    planes: int
    stride: int
    conv: Any
    norm: Any
    shortcut: str = "downsample"  # the projection's names: `{shortcut}_0` conv, `_1` BN

    expansion = 4
    last_bn = "bn3"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = nn.relu(self.norm(name="bn1")(self.conv(self.planes, 1, 1, name="conv1")(x)))
        out = self.conv(self.planes, 3, self.stride, name="conv2")(out)
        out = nn.relu(self.norm(name="bn2")(out))
        out = self.norm(name="bn3")(self.conv(self.planes * 4, 1, 1, name="conv3")(out))
        preact = out + _shortcut(self, x, self.planes * 4)
        return nn.relu(preact), preact


def _shortcut(block: nn.Module, x: jax.Array, out_planes: int) -> jax.Array:
    """Identity, or the projection (torchvision's `downsample`: 1x1 conv + BN) when stride or
    width changes."""
    if block.stride == 1 and x.shape[-1] == out_planes:
        return x
    y = block.conv(out_planes, 1, block.stride, name=f"{block.shortcut}_0")(x)
    return block.norm(name=f"{block.shortcut}_1")(y)


class ResNet(nn.Module):
    """torchvision ResNet.

    Attributes:
      stage_sizes: blocks per stage.
      block: BasicBlock or Bottleneck.
      num_classes: classifier size.
      dtype: compute dtype (None: the inputs' dtype).
      param_dtype: parameter dtype.
      axis_name: BatchNorm synchronization axis.
    """

    stage_sizes: Sequence[int]
    block: Any
    num_classes: int
    dtype: Any = None
    param_dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        x, dtype, conv, norm = layers.opening(self, x, train=train)
        feats = {}
        x = conv(64, 7, 2, 3, name="conv1")(x)
        x = nn.relu(norm(name="bn1")(x))
        x = layers.max_pool(x, 3, 2, 1)
        feats["stem"] = x
        for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), self.stage_sizes), 1):
            stride = 1 if stage == 1 else 2
            for i in range(blocks):
                x, preact = self.block(
                    planes, stride if i == 0 else 1, conv, norm, name=f"layer{stage}_{i}"
                )(x)
            feats[f"stage{stage}"] = x
            # Reference: mdistiller's ImageNet ResNet also lists the stem BatchNorm's output
            # (before ReLU and max-pool) as preact_feats[0]; no distiller reads it, so there is
            # no "stem_preact" here.
            feats[f"stage{stage}_preact"] = preact
        logits = layers.pooled_classifier(
            x, feats, self.num_classes, dtype=dtype, param_dtype=self.param_dtype, name="fc"
        )
        return logits, feats

    @nn.nowrap
    def bn_before_relu(self, variables) -> list[dict[str, jax.Array]]:
        """Per stage, the BatchNorm feeding its final ReLU (last block's `bn2` or `bn3`).

        Reference: mdistiller's ImageNet `get_bn_before_relu` leaves out stage 1 (its OFD
        pairs the last three of each list); this returns every stage.
        """
        return [
            layers.batch_norm_variables(
                variables, (f"layer{stage}_{blocks - 1}", self.block.last_bn)
            )
            for stage, blocks in enumerate(self.stage_sizes, start=1)
        ]


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=Bottleneck)
