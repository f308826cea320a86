"""ResNet-18/34/50/101 backbones in detectron2's layout, with FrozenBatchNorm (NHWC).

detectron2's `build_resnet_backbone`: a stem (7x7/2 conv + norm + ReLU + 3x3/2 max-pool) and
stages res2..res5 (first strides 1, 2, 2, 2). R-18/34 use BasicBlocks; R-50/101 use
bottlenecks, "MSRA" style by default (`stride_in_1x1=True`: the stride sits on the first 1x1
conv; torchvision's v1.5 weights need `stride_in_1x1=False`). A block has a projection
`shortcut` (1x1 conv + norm) only when its input and output widths differ (detectron2's rule,
so R-18's res2.0 has none even though torchvision's name would suggest otherwise).

Variables, named so that detectron2 keys map mechanically (`detection.convert`):
  "params": trainable conv kernels (res3..res5; FPN and heads live elsewhere).
  "frozen": every FrozenBatchNorm's weight / bias / running_mean / running_var (detectron2
    keeps them as buffers) and the conv kernels of the frozen stages (stem and res2 at
    `freeze_at=2`, detectron2's default). Keeping them out of "params" means the optimizer,
    weight decay included, never sees them; the frozen stages' output also passes through
    `stop_gradient`, so no backward pass is spent on them.
A conv `res3_0/conv1` with kernel under "params" and its norm `res3_0/conv1/norm/*` under
"frozen" is detectron2's `res3.0.conv1.weight` and `res3.0.conv1.norm.*`.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

FROZEN = "frozen"  # the collection of non-trainable variables
BN_EPS = 1e-5  # detectron2's FrozenBatchNorm2d default eps
# depth -> (blocks per stage, bottleneck?)
DEPTHS = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
}
STAGE_NAMES = ("res2", "res3", "res4", "res5")

# fvcore's c2_msra_fill: kaiming_normal_(mode="fan_out", nonlinearity="relu"), bias 0.
msra_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class FrozenBatchNorm(nn.Module):
    """detectron2's FrozenBatchNorm2d: x * scale + shift from fixed weight/bias/mean/var.

    scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale. All four
    are variables of the "frozen" collection; initialized as detectron2's buffers (weight 1,
    bias 0, mean 0, var 1 - eps, an identity map).
    """

    eps: float = BN_EPS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        weight = self.variable(FROZEN, "weight", lambda: jnp.ones((c,), jnp.float32)).value
        bias = self.variable(FROZEN, "bias", lambda: jnp.zeros((c,), jnp.float32)).value
        mean = self.variable(FROZEN, "running_mean", lambda: jnp.zeros((c,), jnp.float32)).value
        var = self.variable(
            FROZEN, "running_var", lambda: jnp.full((c,), 1.0 - self.eps, jnp.float32)
        ).value
        scale = weight * jax.lax.rsqrt(var + self.eps)
        shift = bias - mean * scale
        return x * scale.astype(x.dtype) + shift.astype(x.dtype)


class Conv2d(nn.Module):
    """detectron2's `layers.Conv2d`: a conv with symmetric padding k // 2, optional norm child.

    `frozen` puts the kernel (and bias) in the "frozen" collection instead of "params".
    """

    features: int
    kernel_size: int
    stride: int = 1
    use_bias: bool = False
    norm: bool = True
    frozen: bool = False
    kernel_init: Any = msra_init
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        shape = (k, k, x.shape[-1], self.features)
        if self.frozen:
            kernel = self.variable(
                FROZEN, "kernel", lambda: self.kernel_init(self.make_rng("params"), shape)
            ).value
        else:
            kernel = self.param("kernel", self.kernel_init, shape)
        dtype = self.dtype or x.dtype
        pad = k // 2
        y = jax.lax.conv_general_dilated(
            x.astype(dtype),
            kernel.astype(dtype),
            (self.stride, self.stride),
            [(pad, pad), (pad, pad)],
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if self.use_bias:
            if self.frozen:
                bias = self.variable(
                    FROZEN, "bias", lambda: jnp.zeros((self.features,), jnp.float32)
                ).value
            else:
                bias = self.param("bias", nn.initializers.zeros, (self.features,))
            y = y + bias.astype(dtype)
        if self.norm:
            y = FrozenBatchNorm(name="norm")(y)
        return y


class BasicStem(nn.Module):
    """detectron2's BasicStem: `conv1` (7x7/2 + norm), ReLU, 3x3/2 max-pool (padding 1)."""

    out_channels: int = 64
    frozen: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Conv2d(self.out_channels, 7, 2, frozen=self.frozen, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(x)
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class BasicBlock(nn.Module):
    """detectron2's BasicBlock: conv1 (3x3, stride) -> ReLU -> conv2 (3x3), + shortcut."""

    out_channels: int
    stride: int
    bottleneck_channels: int = 0  # unused; the bottleneck's signature
    stride_in_1x1: bool = True  # unused
    frozen: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(Conv2d, frozen=self.frozen, dtype=self.dtype)
        out = nn.relu(conv(self.out_channels, 3, self.stride, name="conv1")(x))
        out = conv(self.out_channels, 3, 1, name="conv2")(out)
        return nn.relu(out + _shortcut(self, x, conv))


class BottleneckBlock(nn.Module):
    """detectron2's BottleneckBlock: 1x1 -> 3x3 -> 1x1 (x4 width), + shortcut.

    With `stride_in_1x1` (MSRA / detectron2's default) the stride is on conv1, else on conv2.
    """

    out_channels: int
    stride: int
    bottleneck_channels: int = 64
    stride_in_1x1: bool = True
    frozen: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(Conv2d, frozen=self.frozen, dtype=self.dtype)
        s1, s3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
        out = nn.relu(conv(self.bottleneck_channels, 1, s1, name="conv1")(x))
        out = nn.relu(conv(self.bottleneck_channels, 3, s3, name="conv2")(out))
        out = conv(self.out_channels, 1, 1, name="conv3")(out)
        return nn.relu(out + _shortcut(self, x, conv))


def _shortcut(block: nn.Module, x: jax.Array, conv) -> jax.Array:
    """Projection (1x1 conv + norm, the block's stride) iff the width changes, as detectron2."""
    if x.shape[-1] == block.out_channels:
        if block.stride != 1:  # detectron2 never builds this case (width always changes).
            raise ValueError("a strided block must change its width in detectron2's ResNet")
        return x
    return conv(block.out_channels, 1, block.stride, name="shortcut")(x)


class ResNet(nn.Module):
    """detectron2's ResNet backbone; `__call__(x)` -> {"res2", ..., "res5"} NHWC.

    Attributes:
      depth: 18, 34, 50 or 101.
      stem_channels: STEM_OUT_CHANNELS (64). The tests shrink it.
      res2_channels: RES2_OUT_CHANNELS (64 for R-18/34, 256 for R-50/101; 0 = that default).
      bottleneck_channels: NUM_GROUPS * WIDTH_PER_GROUP of res2 (64; 0 = stem_channels).
      stride_in_1x1: detectron2's STRIDE_IN_1X1 (True for MSRA weights, False for
        torchvision's).
      freeze_at: FREEZE_AT: 1 freezes the stem, 2 the stem and res2 (default), ...
      dtype: compute dtype (variables stay float32).
    """

    depth: int = 50
    stem_channels: int = 64
    res2_channels: int = 0
    bottleneck_channels: int = 0
    stride_in_1x1: bool = True
    freeze_at: int = 2
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        if self.depth not in DEPTHS:
            raise ValueError(f"ResNet depth {self.depth} not in {sorted(DEPTHS)}")
        blocks, bottleneck = DEPTHS[self.depth]
        block_cls = BottleneckBlock if bottleneck else BasicBlock
        out_channels = self.res2_channels or (self.stem_channels * (4 if bottleneck else 1))
        mid = self.bottleneck_channels or self.stem_channels

        stem = BasicStem(
            self.stem_channels, frozen=self.freeze_at >= 1, dtype=self.dtype, name="stem"
        )
        x = stem(x)
        if self.freeze_at >= 1:
            x = jax.lax.stop_gradient(x)
        outputs = {}
        for i, (name, count) in enumerate(zip(STAGE_NAMES, blocks, strict=True)):
            frozen = self.freeze_at >= i + 2
            for j in range(count):
                x = block_cls(
                    out_channels=out_channels,
                    stride=(1 if i == 0 else 2) if j == 0 else 1,
                    bottleneck_channels=mid,
                    stride_in_1x1=self.stride_in_1x1,
                    frozen=frozen,
                    dtype=self.dtype,
                    name=f"{name}_{j}",
                )(x)
            if frozen:
                x = jax.lax.stop_gradient(x)
            outputs[name] = x
            out_channels *= 2
            mid *= 2
        return outputs
