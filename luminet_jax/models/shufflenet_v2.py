"""ShuffleNetV2 for CIFAR (mdistiller's `ShuffleV2`, net_size 1), in Flax.

Layout (1,355,528 parameters at 100 classes): a stride-1 1x1 stem conv to 24 channels (the
3x3 stem is commented out in mdistiller and would add 576 parameters), three stages with
out_channels (116, 232, 464) made of one stride-2 `DownBlock` (`layerK_0`) followed by
(3, 7, 3) `BasicBlock`s (`layerK_1`..), a 1x1 conv to 1024 channels, global average
pooling and a linear head. Every block ends with a 2-group channel shuffle. Submodules carry
the PyTorch names so that the generic key rule of `torch_convert` maps every leaf.

feats: "stem", "stage1".."stage3", "stage{i}_preact" and "pooled". As mdistiller's
`preact_feats[i]`, stage{i}_preact is the stage's last unit's `cat([x1, bn3(conv3(.))])`
BEFORE the channel shuffle (so its channels are in another order than stage{i}'s), x1 being
the half passed through. `bn_before_relu` gives, channel by channel, the BatchNorm whose
output (through a ReLU) is that channel: `bn3` for the second half, and for x1 the
BatchNorm of the earlier unit of the stage the channel was passed on from (see there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from luminet_jax.models import layers, shufflenet_v1

ModuleDef = Callable[..., nn.Module]

STEM_CHANNELS = 24
SHUFFLE_GROUPS = 2


class BasicBlock(nn.Module):
    """Split the channels in half, transform the second half, concatenate, shuffle.

    Attributes:
      split_ratio: fraction of the channels passed through unchanged.
      conv: a partial of `layers.conv` (dtypes and kernel init bound).
      norm: a partial of `nn.BatchNorm`.

    Returns (output, pre-activation): the shuffled output and `cat([x1, bn3(.)])` before
    the ReLU and the shuffle (mdistiller's `preact`).
    """

    conv: ModuleDef
    norm: ModuleDef
    split_ratio: float = 0.5

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        split = int(x.shape[-1] * self.split_ratio)
        kept, out = x[..., :split], x[..., split:]
        out = nn.relu(self.norm(name="bn1")(self.conv(split, 1, name="conv1")(out)))
        out = self.norm(name="bn2")(self.conv(split, 3, groups=split, name="conv2")(out))
        pre = self.norm(name="bn3")(self.conv(split, 1, name="conv3")(out))
        out = jnp.concatenate([kept, nn.relu(pre)], axis=-1)
        preact = jnp.concatenate([kept, pre], axis=-1)
        return shufflenet_v1.channel_shuffle(out, SHUFFLE_GROUPS), preact


class DownBlock(nn.Module):
    """Stride-2 block: two branches of out_channels // 2 each, concatenated and shuffled.

    Attributes:
      out_channels: channels after the concatenation.
      conv: a partial of `layers.conv` (dtypes and kernel init bound).
      norm: a partial of `nn.BatchNorm`.
    """

    out_channels: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        in_channels = x.shape[-1]
        mid_channels = self.out_channels // 2
        # Left branch: depthwise 3x3/2, then 1x1.
        left = self.norm(name="bn1")(
            self.conv(in_channels, 3, 2, groups=in_channels, name="conv1")(x)
        )
        left = nn.relu(self.norm(name="bn2")(self.conv(mid_channels, 1, name="conv2")(left)))
        # Right branch: 1x1, depthwise 3x3/2, 1x1.
        right = nn.relu(self.norm(name="bn3")(self.conv(mid_channels, 1, name="conv3")(x)))
        right = self.conv(mid_channels, 3, 2, groups=mid_channels, name="conv4")(right)
        right = self.norm(name="bn4")(right)
        right = nn.relu(self.norm(name="bn5")(self.conv(mid_channels, 1, name="conv5")(right)))
        out = jnp.concatenate([left, right], axis=-1)
        return shufflenet_v1.channel_shuffle(out, SHUFFLE_GROUPS)


class ShuffleNetV2(nn.Module):
    """mdistiller's CIFAR ShuffleV2 (net_size 1).

    Attributes:
      num_classes: classifier size.
      out_channels: channels of the three stages and of the final 1x1 conv.
      num_blocks: `BasicBlock`s per stage (each stage also starts with a `DownBlock`).
      dtype: compute dtype; None uses the inputs' dtype.
      param_dtype: parameter dtype.
      axis_name: BatchNorm's cross-device axis (synchronized BatchNorm), or None.
    """

    num_classes: int
    out_channels: Sequence[int] = (116, 232, 464, 1024)
    num_blocks: Sequence[int] = (3, 7, 3)
    dtype: Any = None
    param_dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> tuple[jnp.ndarray, dict]:
        """Returns (logits, feats) for NHWC images."""
        x, dtype, conv, norm = layers.opening(
            self, x, train=train, kernel_init=layers.TORCH_DEFAULT_CONV_INIT
        )
        feats = {}
        x = nn.relu(norm(name="bn1")(conv(STEM_CHANNELS, 1, name="conv1")(x)))
        feats["stem"] = x
        for stage, (channels, blocks) in enumerate(zip(self.out_channels, self.num_blocks)):
            x = DownBlock(channels, conv=conv, norm=norm, name=f"layer{stage + 1}_0")(x)
            for index in range(1, blocks + 1):
                x, preact = BasicBlock(conv=conv, norm=norm, name=f"layer{stage + 1}_{index}")(x)
            feats[f"stage{stage + 1}"] = x
            feats[f"stage{stage + 1}_preact"] = preact
        x = nn.relu(norm(name="bn2")(conv(self.out_channels[-1], 1, name="conv2")(x)))
        # Reference: F.avg_pool2d(out, 4); the same as a global mean at 32x32 inputs.
        logits = layers.pooled_classifier(
            x, feats, self.num_classes, dtype=dtype, param_dtype=self.param_dtype, name="linear"
        )
        return logits, feats

    @nn.nowrap
    def bn_before_relu(self, variables) -> list[dict[str, jnp.ndarray]]:
        """Per stage, channel by channel, the BatchNorm whose output feeds the ReLU before it.

        stage{i}_preact = cat([x1, bn3(.)]) of the stage's last unit: its second half is
        that unit's `bn3`. Its first half x1 was passed through from earlier units, where
        each channel was the ReLU of a BatchNorm (`bn2`/`bn5` of the stage's DownBlock or
        `bn3` of a BasicBlock); those channels get that BatchNorm's entries, traced through
        the channel shuffles. (x1 is therefore already non-negative in stage{i}_preact.)

        Reference: mdistiller's ShuffleV2 raises NotImplementedError here.
        """
        result = []
        for stage, (channels, blocks) in enumerate(zip(self.out_channels, self.num_blocks), 1):
            half = channels // 2
            # Source of each channel: (BatchNorm path, channel index in that BatchNorm).
            down = f"layer{stage}_0"
            sources = [((down, "bn2"), c) for c in range(half)]
            sources += [((down, "bn5"), c) for c in range(half)]
            sources = _shuffled(sources)
            for index in range(1, blocks + 1):
                last = f"layer{stage}_{index}"
                preact = sources[:half] + [((last, "bn3"), c) for c in range(half)]
                sources = _shuffled(preact)
            paths = list(dict.fromkeys(path for path, _ in preact))
            offsets = dict(zip(paths, np.cumsum([0] + [half] * len(paths))))
            take = np.array([offsets[path] + c for path, c in preact])
            bns = [layers.batch_norm_variables(variables, path) for path in paths]
            result.append(
                {
                    key: jnp.concatenate([bn[key] for bn in bns])[take]
                    for key in ("scale", "bias", "mean", "var")
                }
            )
        return result


def _shuffled(items: list) -> list:
    """`channel_shuffle` with SHUFFLE_GROUPS applied to a list of per-channel items."""
    order = np.arange(len(items)).reshape(SHUFFLE_GROUPS, -1).T.reshape(-1)
    return [items[i] for i in order]
