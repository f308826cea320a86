"""mdistiller's CIFAR ResNet50 (`resnetv2.py`): bottlenecks [3, 4, 6, 3] with a 3x3 stem.

The stem is a stride-1 3x3 conv (no max-pool); stages have widths 64, 128, 256, 512
(x4 expansion) and strides 1, 2, 2, 2. The projection shortcut is PyTorch's `shortcut`
Sequential (`shortcut_0` conv, `shortcut_1` BatchNorm) and the classifier is `linear`.

feats: "stem", "stage1".."stage4", "stage{i}_preact" (mdistiller's `preact_feats[i]`: the
stage's last bottleneck before its final ReLU, `bn3(conv3(.)) + shortcut`) and "pooled".
`bn_before_relu` gives each stage's last `bn3`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from luminet_jax.models import layers, resnet

# mdistiller names the projection `shortcut` (torchvision: `downsample`).
Bottleneck = functools.partial(resnet.Bottleneck, shortcut="shortcut")


class ResNet50Cifar(nn.Module):
    """mdistiller's ResNet50 for 32x32 inputs.

    Attributes:
      num_classes: classifier size.
      num_blocks: bottlenecks per stage.
      dtype: compute dtype (None: the inputs' dtype).
      param_dtype: parameter dtype.
      axis_name: BatchNorm synchronization axis.
    """

    num_classes: int
    num_blocks: Sequence[int] = (3, 4, 6, 3)
    dtype: Any = None
    param_dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        x, dtype, conv, norm = layers.opening(self, x, train=train)
        feats = {}
        x = nn.relu(norm(name="bn1")(conv(64, 3, 1, name="conv1")(x)))
        feats["stem"] = x
        widths = (64, 128, 256, 512)
        strides = (1, 2, 2, 2)
        for stage, (planes, stride, blocks) in enumerate(
            zip(widths, strides, self.num_blocks), start=1
        ):
            for i in range(blocks):
                x, preact = Bottleneck(
                    planes, stride if i == 0 else 1, conv, norm, name=f"layer{stage}_{i}"
                )(x)
            feats[f"stage{stage}"] = x
            feats[f"stage{stage}_preact"] = preact
        logits = layers.pooled_classifier(
            x, feats, self.num_classes, dtype=dtype, param_dtype=self.param_dtype, name="linear"
        )
        return logits, feats

    @nn.nowrap
    def bn_before_relu(self, variables) -> list[dict[str, jax.Array]]:
        """Per stage, the BatchNorm feeding its final ReLU: the last bottleneck's `bn3`."""
        return [
            layers.batch_norm_variables(variables, (f"layer{stage}_{blocks - 1}", "bn3"))
            for stage, blocks in enumerate(self.num_blocks, start=1)
        ]
