"""MobileNetV2 for CIFAR (mdistiller's `mobile_half`: expansion 6, width 0.5), in Flax.

Layout (812,836 parameters at 100 classes): a 3x3 stem conv (16 channels, stride 2, as in
mdistiller's code: its CIFAR variant reaches 2x2 before the 1280-channel 1x1 conv), seven
groups of inverted residual blocks (t, c, n, s) = (1,16,1,1), (6,24,2,1), (6,32,3,2),
(6,64,4,2), (6,96,3,1), (6,160,3,2), (6,320,1,1) with c scaled by the width, a 1x1 conv to
1280 channels (not scaled below width 1), global average pooling and a linear classifier.
Submodules carry the PyTorch names (`blocks_2_0/conv_3` <-> `blocks.2.0.conv.3`,
`conv1_0` <-> `conv1.0`, `classifier_0` <-> `classifier.0`).

feats: "stem" is the stem output; "stage1".."stage4" are mdistiller's f1..f4 (after block
groups 1, 2, 4 and 6); "pooled" is the pooled 1280-d feature. mdistiller has no
preact_feats here; the blocks end in a linear projection (no ReLU), so "stage{i}_preact" is
the stage output itself, and `bn_before_relu` gives the projection BatchNorm (`conv_7`) of
the stage's last block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from luminet_jax.models import layers

ModuleDef = Callable[..., nn.Module]

# (expansion, channels, blocks, stride); an expansion of None means the model's `expand_ratio`.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)
# Block groups after which mdistiller records a feature (f1..f4).
FEATURE_GROUPS = (1, 2, 4, 6)

# mdistiller's init: conv weights N(0, sqrt(2 / (k*k*out_channels))) (`layers.conv`'s
# default), linear weights N(0, 0.01).
LINEAR_INIT = nn.initializers.normal(0.01)


class InvertedResidual(nn.Module):
    """Pointwise expand, depthwise 3x3, pointwise linear; identity added when shapes match.

    Attributes:
      out_channels: output channels.
      stride: stride of the depthwise conv.
      expand_ratio: expansion of the hidden width.
      conv: a partial of `layers.conv` (dtypes bound).
      norm: a partial of `nn.BatchNorm`.
    """

    out_channels: int
    stride: int
    expand_ratio: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        in_channels = x.shape[-1]
        hidden = in_channels * self.expand_ratio
        # Names follow the PyTorch nn.Sequential indices (2 and 5 are the ReLUs).
        out = nn.relu(self.norm(name="conv_1")(self.conv(hidden, 1, name="conv_0")(x)))
        out = self.conv(hidden, 3, self.stride, groups=hidden, name="conv_3")(out)
        out = nn.relu(self.norm(name="conv_4")(out))
        out = self.norm(name="conv_7")(self.conv(self.out_channels, 1, name="conv_6")(out))
        if self.stride == 1 and in_channels == self.out_channels:
            return x + out
        return out


class MobileNetV2(nn.Module):
    """mdistiller's CIFAR MobileNetV2 (`mobile_half` by default).

    Attributes:
      num_classes: classifier size.
      expand_ratio: the expansion T of all but the first block group.
      width_mult: channel multiplier W.
      setting: the (expansion, channels, blocks, stride) of each block group.
      dtype: compute dtype; None uses the inputs' dtype.
      param_dtype: parameter dtype.
      axis_name: BatchNorm's cross-device axis (synchronized BatchNorm), or None.
    """

    num_classes: int
    expand_ratio: int = 6
    width_mult: float = 0.5
    setting: Sequence[tuple[int | None, int, int, int]] = INVERTED_RESIDUAL_SETTING
    dtype: Any = None
    param_dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> tuple[jnp.ndarray, dict]:
        """Returns (logits, feats) for NHWC images."""
        x, dtype, conv, norm = layers.opening(self, x, train=train)
        feats = {}
        stem_channels = int(32 * self.width_mult)
        x = conv(stem_channels, 3, 2, name="conv1_0")(x)
        x = nn.relu(norm(name="conv1_1")(x))
        feats["stem"] = x
        for group, (expansion, channels, blocks, stride) in enumerate(self.setting):
            out_channels = int(channels * self.width_mult)
            for index in range(blocks):
                x = InvertedResidual(
                    out_channels=out_channels,
                    stride=stride if index == 0 else 1,
                    expand_ratio=self.expand_ratio if expansion is None else expansion,
                    conv=conv,
                    norm=norm,
                    name=f"blocks_{group}_{index}",
                )(x)
            if group in FEATURE_GROUPS:
                stage = FEATURE_GROUPS.index(group) + 1
                feats[f"stage{stage}"] = x
                feats[f"stage{stage}_preact"] = x  # no ReLU after a linear bottleneck
        last_channels = int(1280 * self.width_mult) if self.width_mult > 1.0 else 1280
        x = nn.relu(norm(name="conv2_1")(conv(last_channels, 1, name="conv2_0")(x)))
        # Reference: AvgPool2d(2, ceil_mode=True) on the 2x2 map; a global mean at 32x32 inputs.
        logits = layers.pooled_classifier(
            x,
            feats,
            self.num_classes,
            dtype=dtype,
            param_dtype=self.param_dtype,
            kernel_init=LINEAR_INIT,
            bias_init=nn.initializers.zeros,
            name="classifier_0",
        )
        return logits, feats

    @nn.nowrap
    def bn_before_relu(self, variables) -> list[dict[str, jnp.ndarray]]:
        """Per stage, the projection BatchNorm (`conv_7`) of the stage's last block.

        As mdistiller's `get_bn_before_relu`, although no ReLU follows it: the stage output
        is that BatchNorm's output, plus the identity shortcut when the block has one.
        """
        return [
            layers.batch_norm_variables(
                variables, (f"blocks_{group}_{self.setting[group][2] - 1}", "conv_7")
            )
            for group in FEATURE_GROUPS
        ]
