"""CIFAR VGGs with BatchNorm (mdistiller's `vgg.py`): vgg8, vgg11, vgg13, vgg16, vgg19.

Five blocks of conv3x3(+bias)-BN-ReLU; the last ReLU of each block is applied outside the
block (mdistiller keeps the pre-activation as a feature), 2x2 max-pools after blocks 0-2,
pool3 only for 64x64 inputs (skipped at 32x32), then global average pooling and one linear
classifier. PyTorch's `blockK` Sequential indexes conv, BN, ReLU as 0, 1, 2, 3, 4, ...
so the j-th conv of block K is `blockK_{3j}` and its BatchNorm `blockK_{3j+1}`.

feats: "stem" (block 0 after its ReLU), "stage1".."stage4" (blocks 1-4 after their ReLU),
"stage{i}_preact" (mdistiller's `preact_feats[i]`: block i's last BatchNorm output, before
the ReLU) and "pooled". `bn_before_relu` gives each of blocks 1-4's last BatchNorm.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from luminet_jax.models import layers

CFGS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VGG(nn.Module):
    """mdistiller's CIFAR VGG with BatchNorm.

    Attributes:
      cfg: conv widths of the five blocks.
      num_classes: classifier size.
      dtype: compute dtype (None: the inputs' dtype).
      param_dtype: parameter dtype.
      axis_name: BatchNorm synchronization axis.
    """

    cfg: Sequence[Sequence[int]]
    num_classes: int
    dtype: Any = None
    param_dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        height = x.shape[1]
        x, dtype, _, norm = layers.opening(self, x, train=train)
        feats = {}
        for b, widths in enumerate(self.cfg):
            if b == 4 and height == 64:
                x = layers.max_pool(x, 2, 2)  # pool3, only for 64x64 inputs as in the reference
            for j, width in enumerate(widths):
                if j > 0:
                    x = nn.relu(x)
                x = layers.conv(
                    width,
                    3,
                    1,
                    dtype=dtype,
                    param_dtype=self.param_dtype,
                    use_bias=True,
                    name=f"block{b}_{3 * j}",
                )(x)
                x = norm(name=f"block{b}_{3 * j + 1}")(x)
            if b > 0:
                feats[f"stage{b}_preact"] = x
            x = nn.relu(x)
            feats["stem" if b == 0 else f"stage{b}"] = x
            if b < 3:
                x = layers.max_pool(x, 2, 2)
        logits = layers.pooled_classifier(
            x,
            feats,
            self.num_classes,
            dtype=dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.normal(0.01),
            bias_init=nn.initializers.zeros,
            name="classifier",
        )
        return logits, feats

    @nn.nowrap
    def bn_before_relu(self, variables) -> list[dict[str, jax.Array]]:
        """Per stage (blocks 1-4), the block's last BatchNorm, which feeds its ReLU."""
        return [
            layers.batch_norm_variables(variables, (f"block{b}_{3 * (len(widths) - 1) + 1}",))
            for b, widths in enumerate(self.cfg)
            if b > 0
        ]


VGG8 = functools.partial(VGG, cfg=CFGS["vgg8"])
VGG11 = functools.partial(VGG, cfg=CFGS["vgg11"])
VGG13 = functools.partial(VGG, cfg=CFGS["vgg13"])
VGG16 = functools.partial(VGG, cfg=CFGS["vgg16"])
VGG19 = functools.partial(VGG, cfg=CFGS["vgg19"])
