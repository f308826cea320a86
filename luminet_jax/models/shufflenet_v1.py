"""ShuffleNetV1 for CIFAR (mdistiller's `ShuffleV1`), in Flax.

Layout (949,258 parameters at 100 classes): a stride-1 1x1 stem conv to 24 channels, three
stages of bottlenecks with out_planes (240, 480, 960), (4, 8, 4) blocks and 3 groups, global
average pooling and a linear head. The first block of a stage has stride 2 and concatenates
its output with a 3x3/2 average-pooled shortcut; the others add an identity shortcut.
Submodules carry the PyTorch names (`layer1_0/conv1` <-> `layer1.0.conv1`) so that the
generic key rule of `torch_convert` maps every leaf.

feats: "stem", "stage1".."stage3", "stage{i}_preact" (mdistiller's `preact_feats[i]`: the
stage's last unit before its final ReLU, `bn3(conv3(.))` plus the shortcut, or their
concatenation for a stride-2 unit) and "pooled". `bn_before_relu` gives each stage's last
`bn3` (the last unit of a stage adds an identity shortcut whenever the stage has more than
one unit, as all of mdistiller's do).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from luminet_jax.models import layers

ModuleDef = Callable[..., nn.Module]

STEM_PLANES = 24

# mdistiller keeps PyTorch's default Conv2d init, U(+-1/sqrt(fan_in)) like nn.Linear's.
TORCH_DEFAULT_KERNEL_INIT = layers.TORCH_DEFAULT_CONV_INIT


def channel_shuffle(x: jnp.ndarray, groups: int) -> jnp.ndarray:
    """Channel shuffle of an NHWC tensor, in PyTorch's `view(N,g,C/g,H,W).permute` order.

    Channel `i * (C // groups) + j` moves to position `j * groups + i`.
    """
    *lead, channels = x.shape
    x = x.reshape(*lead, groups, channels // groups)
    return jnp.swapaxes(x, -1, -2).reshape(*lead, channels)


class Bottleneck(nn.Module):
    """mdistiller's ShuffleNetV1 bottleneck (grouped 1x1, shuffle, depthwise 3x3, grouped 1x1).

    Attributes:
      out_planes: channels produced by the residual branch (the stride-2 block concatenates
        the input channels to it).
      stride: 1 (identity shortcut, add) or 2 (avg-pool shortcut, concat).
      groups: groups of the 1x1 convs.
      conv1_groups: groups of the first 1x1 conv (mdistiller uses 1 right after the stem).
      conv: a partial of `layers.conv` (dtypes and kernel init bound).
      norm: a partial of `nn.BatchNorm`.

    Returns (output, pre-activation): the final ReLU's output and its input.
    """

    out_planes: int
    stride: int
    groups: int
    conv1_groups: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        mid_planes = int(self.out_planes / 4)
        out = self.conv(mid_planes, 1, groups=self.conv1_groups, name="conv1")(x)
        out = nn.relu(self.norm(name="bn1")(out))
        out = channel_shuffle(out, self.conv1_groups)
        out = self.conv(mid_planes, 3, self.stride, groups=mid_planes, name="conv2")(out)
        out = nn.relu(self.norm(name="bn2")(out))
        out = self.conv(self.out_planes, 1, groups=self.groups, name="conv3")(out)
        out = self.norm(name="bn3")(out)
        if self.stride == 2:
            # PyTorch AvgPool2d(3, 2, padding=1) counts the zero padding (count_include_pad).
            shortcut = nn.avg_pool(
                x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), count_include_pad=True
            )
            preact = jnp.concatenate([out, shortcut], axis=-1)
        else:
            preact = out + x
        return nn.relu(preact), preact


class ShuffleNetV1(nn.Module):
    """mdistiller's CIFAR ShuffleV1.

    Attributes:
      num_classes: classifier size.
      out_planes: output channels of the three stages.
      num_blocks: blocks per stage.
      groups: groups of the 1x1 convs.
      dtype: compute dtype; None uses the inputs' dtype.
      param_dtype: parameter dtype.
      axis_name: BatchNorm's cross-device axis (synchronized BatchNorm), or None.
    """

    num_classes: int
    out_planes: Sequence[int] = (240, 480, 960)
    num_blocks: Sequence[int] = (4, 8, 4)
    groups: int = 3
    dtype: Any = None
    param_dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> tuple[jnp.ndarray, dict]:
        """Returns (logits, feats) for NHWC images."""
        x, dtype, conv, norm = layers.opening(
            self, x, train=train, kernel_init=TORCH_DEFAULT_KERNEL_INIT
        )
        feats = {}
        x = conv(STEM_PLANES, 1, name="conv1")(x)
        x = nn.relu(norm(name="bn1")(x))
        feats["stem"] = x
        in_planes = STEM_PLANES
        for stage, (planes, blocks) in enumerate(zip(self.out_planes, self.num_blocks)):
            for index in range(blocks):
                stride = 2 if index == 0 else 1
                concat_planes = in_planes if index == 0 else 0
                x, preact = Bottleneck(
                    out_planes=planes - concat_planes,
                    stride=stride,
                    groups=self.groups,
                    # mdistiller: `g = 1 if in_planes == 24 else groups`.
                    conv1_groups=1 if in_planes == STEM_PLANES else self.groups,
                    conv=conv,
                    norm=norm,
                    name=f"layer{stage + 1}_{index}",
                )(x)
                in_planes = planes
            feats[f"stage{stage + 1}"] = x
            feats[f"stage{stage + 1}_preact"] = preact
        # Reference: F.avg_pool2d(out, 4); the same as a global mean at 32x32 inputs.
        logits = layers.pooled_classifier(
            x, feats, self.num_classes, dtype=dtype, param_dtype=self.param_dtype, name="linear"
        )
        return logits, feats

    @nn.nowrap
    def bn_before_relu(self, variables) -> list[dict[str, jnp.ndarray]]:
        """Per stage, the BatchNorm feeding its final ReLU: the last unit's `bn3`.

        Reference: mdistiller's ShuffleV1 raises NotImplementedError here.

        Raises:
          ValueError: for a one-unit stage, whose pre-activation concatenates `bn3` with a
            pooled shortcut that no BatchNorm produces.
        """
        if min(self.num_blocks) < 2:
            raise ValueError(
                f"ShuffleNetV1 with num_blocks={tuple(self.num_blocks)}: a one-unit stage "
                "ends in a concatenation, not a BatchNorm, before its ReLU"
            )
        return [
            layers.batch_norm_variables(variables, (f"layer{stage}_{blocks - 1}", "bn3"))
            for stage, blocks in enumerate(self.num_blocks, start=1)
        ]
