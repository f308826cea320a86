"""Wide ResNets for CIFAR (mdistiller's `wrn.py`): wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2.

Pre-activation blocks (BN-ReLU-conv), three groups of widths 16k, 32k, 64k (strides 1, 2, 2),
and a final BN-ReLU before global pooling. Dropout is 0 as in mdistiller's teachers and
students, so it is omitted. Names follow the PyTorch reference: `conv1`,
`block1/layer_0/{bn1,conv1,bn2,conv2,convShortcut}`, `bn1`, `fc`.

feats: "stem" (conv1's output), "stage1".."stage3" (the groups' outputs, no ReLU in a
pre-activation net), "stage{i}_preact" and "pooled". As mdistiller's `preact_feats`,
stage{i}_preact is the BatchNorm that next sees stage{i} applied to it: the next group's
first `bn1` (`block{i+1}/layer_0/bn1`), the final `bn1` for the last stage; these are also
`bn_before_relu`.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from luminet_jax.models import layers


class WideBasic(nn.Module):
    """Pre-activation block; the 1x1 shortcut (when widths differ) sees the activated input.

    Returns (output, bn1(input)): the block's output and its first BatchNorm's output.
    """

    out_planes: int
    stride: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        equal_in_out = x.shape[-1] == self.out_planes
        normed = self.norm(name="bn1")(x)
        act = nn.relu(normed)
        out = self.conv(self.out_planes, 3, self.stride, name="conv1")(act)
        out = nn.relu(self.norm(name="bn2")(out))
        out = self.conv(self.out_planes, 3, 1, name="conv2")(out)
        if equal_in_out:
            # As in the reference, an equal-width block keeps an identity shortcut on the raw
            # input (it never has stride 2 in these networks).
            shortcut = x
        else:
            shortcut = self.conv(self.out_planes, 1, self.stride, padding=0, name="convShortcut")(
                act
            )
        return shortcut + out, normed


class NetworkBlock(nn.Module):
    """A group of `num_layers` WideBasic blocks (PyTorch `NetworkBlock.layer` Sequential).

    Returns (output, the first block's bn1(input)).
    """

    num_layers: int
    out_planes: int
    stride: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        first_normed = None
        for i in range(self.num_layers):
            x, normed = WideBasic(
                self.out_planes,
                self.stride if i == 0 else 1,
                self.conv,
                self.norm,
                name=f"layer_{i}",
            )(x)
            first_normed = normed if first_normed is None else first_normed
        return x, first_normed


class WideResNet(nn.Module):
    """WRN-depth-widen for 32x32 inputs.

    Attributes:
      depth: 6n + 4.
      widen_factor: width multiplier k.
      num_classes: classifier size.
      dtype: compute dtype (None: the inputs' dtype).
      param_dtype: parameter dtype.
      axis_name: BatchNorm synchronization axis.
    """

    depth: int
    widen_factor: int
    num_classes: int
    dtype: Any = None
    param_dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        x, dtype, conv, norm = layers.opening(self, x, train=train)
        n = (self.depth - 4) // 6
        k = self.widen_factor
        feats = {}
        x = conv(16, 3, 1, name="conv1")(x)
        feats["stem"] = x
        # Reference: mdistiller calls block{i+1}.layer[0].bn1 and the final bn1 a second time
        # on stage{i} for preact_feats (in train mode updating their running statistics
        # twice per batch); here each BatchNorm runs once and its output is reused.
        for g, (width, stride) in enumerate(zip((16 * k, 32 * k, 64 * k), (1, 2, 2)), start=1):
            x, normed = NetworkBlock(n, width, stride, conv, norm, name=f"block{g}")(x)
            if g > 1:
                feats[f"stage{g - 1}_preact"] = normed
            feats[f"stage{g}"] = x
        x = norm(name="bn1")(x)
        feats["stage3_preact"] = x
        x = nn.relu(x)
        # Reference: avg_pool2d(8) on the 8x8 map; a global mean is the same at 32x32.
        logits = layers.pooled_classifier(
            x,
            feats,
            self.num_classes,
            dtype=dtype,
            param_dtype=self.param_dtype,
            bias_init=nn.initializers.zeros,
            name="fc",
        )
        return logits, feats

    @nn.nowrap
    def bn_before_relu(self, variables) -> list[dict[str, jax.Array]]:
        """Per stage, the BatchNorm feeding the ReLU that next sees it (see the docstring)."""
        paths = [("block2", "layer_0", "bn1"), ("block3", "layer_0", "bn1"), ("bn1",)]
        return [layers.batch_norm_variables(variables, path) for path in paths]


WRN16x1 = functools.partial(WideResNet, depth=16, widen_factor=1)
WRN16x2 = functools.partial(WideResNet, depth=16, widen_factor=2)
WRN40x1 = functools.partial(WideResNet, depth=40, widen_factor=1)
WRN40x2 = functools.partial(WideResNet, depth=40, widen_factor=2)
