"""MobileNetV1 for ImageNet (the student of ResNet-50 -> MobileNetV1 in mdistiller), in Flax.

Layout (4,231,976 parameters at 1000 classes): a 3x3/2 stem conv to 32 channels, then 13
depthwise-separable blocks (depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU) with
output channels 64, 128, 128, 256, 256, 512 x6, 1024, 1024 and strides 2 at blocks 2, 4, 6
and 12, global average pooling and a linear head. Names follow the PyTorch
`nn.Sequential` indices: torch `model.K.I` is flax `model_K_I` (I = 0 and 3 the convs, 1 and
4 the BatchNorms; the stem is `model_0_0`/`model_0_1`), and the head is `fc`.

feats: "stem" is the stem output (112x112 at 224 input); "stage1".."stage4" are
mdistiller's feats after blocks 3, 5, 11 and 13 (post-ReLU, 56/28/14/7);
"stage{i}_preact" are its `preact_feats[i - 1]`, the same blocks' pointwise BatchNorm
output before the ReLU (that BatchNorm, `model_K_4`, is `bn_before_relu`); "pooled" is the
1024-d pooled feature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from luminet_jax.models import layers

ModuleDef = Callable[..., nn.Module]

STEM_CHANNELS = 32
# (output channels, stride) of the depthwise-separable blocks model_1 .. model_13.
BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
# Blocks after which mdistiller records a feature (feat1..feat4).
FEATURE_BLOCKS = (3, 5, 11, 13)

# mdistiller keeps PyTorch's default Conv2d init, U(+-1/sqrt(fan_in)) like nn.Linear's.
TORCH_DEFAULT_KERNEL_INIT = layers.TORCH_DEFAULT_CONV_INIT


class MobileNetV1(nn.Module):
    """mdistiller's ImageNet MobileNetV1.

    Attributes:
      num_classes: classifier size.
      dtype: compute dtype; None uses the inputs' dtype.
      param_dtype: parameter dtype.
      axis_name: BatchNorm's cross-device axis (synchronized BatchNorm), or None.
    """

    num_classes: int
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
        x = conv(STEM_CHANNELS, 3, 2, name="model_0_0")(x)
        x = nn.relu(norm(name="model_0_1")(x))
        feats["stem"] = x
        for block, (channels, stride) in enumerate(BLOCKS, start=1):
            in_channels = x.shape[-1]
            x = conv(in_channels, 3, stride, groups=in_channels, name=f"model_{block}_0")(x)
            x = nn.relu(norm(name=f"model_{block}_1")(x))
            x = conv(channels, 1, name=f"model_{block}_3")(x)
            preact = norm(name=f"model_{block}_4")(x)
            x = nn.relu(preact)
            if block in FEATURE_BLOCKS:
                stage = FEATURE_BLOCKS.index(block) + 1
                feats[f"stage{stage}"] = x
                feats[f"stage{stage}_preact"] = preact
        # Reference: AvgPool2d(7) on the 7x7 map; a global mean at 224x224 inputs, and it also
        # accepts smaller inputs.
        logits = layers.pooled_classifier(
            x, feats, self.num_classes, dtype=dtype, param_dtype=self.param_dtype, name="fc"
        )
        return logits, feats

    @nn.nowrap
    def bn_before_relu(self, variables) -> list[dict[str, jnp.ndarray]]:
        """Per stage, the pointwise BatchNorm (`model_K_4`) of the stage's last block."""
        return [
            layers.batch_norm_variables(variables, (f"model_{block}_4",))
            for block in FEATURE_BLOCKS
        ]
