"""ShuffleNetV2 for CIFAR (mdistiller's `ShuffleV2`, net_size 1), in Flax.

Layout (1,355,528 parameters at 100 classes): a stride-1 1x1 stem conv to 24 channels (the
3x3 stem is commented out in mdistiller and would add 576 parameters), three stages with
out_channels (116, 232, 464) made of one stride-2 `DownBlock` (`layerK_0`) followed by
(3, 7, 3) `BasicBlock`s (`layerK_1`..), a 1x1 conv to 1024 channels, global average
pooling and a linear head. Every block ends with a 2-group channel shuffle. Submodules carry
the PyTorch names so that the generic key rule of `torch_convert` maps every leaf.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from luminet_jax.models import layers, shufflenet_v1

ModuleDef = Callable[..., nn.Module]

STEM_CHANNELS = 24
SHUFFLE_GROUPS = 2


class BasicBlock(nn.Module):
    """Split the channels in half, transform the second half, concatenate, shuffle.

    Attributes:
      split_ratio: fraction of the channels passed through unchanged.
      conv: a partial of `nn.Conv`.
      norm: a partial of `nn.BatchNorm`.
    """

    conv: ModuleDef
    norm: ModuleDef
    split_ratio: float = 0.5

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        split = int(x.shape[-1] * self.split_ratio)
        kept, out = x[..., :split], x[..., split:]
        out = nn.relu(self.norm(name="bn1")(self.conv(split, (1, 1), name="conv1")(out)))
        out = self.conv(
            split, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=split, name="conv2"
        )(out)
        out = self.norm(name="bn2")(out)
        out = nn.relu(self.norm(name="bn3")(self.conv(split, (1, 1), name="conv3")(out)))
        out = jnp.concatenate([kept, out], axis=-1)
        return shufflenet_v1.channel_shuffle(out, SHUFFLE_GROUPS)


class DownBlock(nn.Module):
    """Stride-2 block: two branches of out_channels // 2 each, concatenated and shuffled.

    Attributes:
      out_channels: channels after the concatenation.
      conv: a partial of `nn.Conv`.
      norm: a partial of `nn.BatchNorm`.
    """

    out_channels: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        in_channels = x.shape[-1]
        mid_channels = self.out_channels // 2
        depthwise = functools.partial(self.conv, strides=(2, 2), padding=((1, 1), (1, 1)))
        # Left branch: depthwise 3x3/2, then 1x1.
        left = self.norm(name="bn1")(
            depthwise(in_channels, (3, 3), feature_group_count=in_channels, name="conv1")(x)
        )
        left = nn.relu(self.norm(name="bn2")(self.conv(mid_channels, (1, 1), name="conv2")(left)))
        # Right branch: 1x1, depthwise 3x3/2, 1x1.
        right = nn.relu(self.norm(name="bn3")(self.conv(mid_channels, (1, 1), name="conv3")(x)))
        right = self.norm(name="bn4")(
            depthwise(mid_channels, (3, 3), feature_group_count=mid_channels, name="conv4")(right)
        )
        right = nn.relu(self.norm(name="bn5")(self.conv(mid_channels, (1, 1), name="conv5")(right)))
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
        dtype = layers.compute_dtype(self.dtype, x)
        x = x.astype(dtype)
        conv = functools.partial(
            nn.Conv,
            use_bias=False,
            dtype=dtype,
            param_dtype=self.param_dtype,
            kernel_init=shufflenet_v1.TORCH_DEFAULT_KERNEL_INIT,
        )
        norm = layers.batch_norm(
            train=train, axis_name=self.axis_name, dtype=dtype, param_dtype=self.param_dtype
        )
        feats = {}
        x = nn.relu(norm(name="bn1")(conv(STEM_CHANNELS, (1, 1), name="conv1")(x)))
        feats["stem"] = x
        for stage, (channels, blocks) in enumerate(zip(self.out_channels, self.num_blocks)):
            x = DownBlock(channels, conv=conv, norm=norm, name=f"layer{stage + 1}_0")(x)
            for index in range(1, blocks + 1):
                x = BasicBlock(conv=conv, norm=norm, name=f"layer{stage + 1}_{index}")(x)
            feats[f"stage{stage + 1}"] = x
        x = nn.relu(norm(name="bn2")(conv(self.out_channels[-1], (1, 1), name="conv2")(x)))
        # Reference: F.avg_pool2d(out, 4); the same as a global mean at 32x32 inputs.
        logits = layers.pooled_classifier(
            x, feats, self.num_classes, dtype=dtype, param_dtype=self.param_dtype, name="linear"
        )
        return logits, feats
