"""detectron2's FPN on a ResNet: p2..p5 by lateral 1x1 + output 3x3 convs, p6 by max-pool.

Top-down: p5's lateral is the start; each lower level adds its lateral conv to the nearest
x2 upsampling of the level above (before that level's output conv), and every level goes
through its own 3x3 output conv. p6 is `LastLevelMaxPool` (kernel 1, stride 2: every other
pixel of p5). Convs have biases (no norm, detectron2's default FPN.NORM "") and fvcore's
c2_xavier_fill init. Module names mirror detectron2's: this module is `backbone`, with the
ResNet as `bottom_up` and the convs `fpn_lateral{2..5}` / `fpn_output{2..5}`, so its
variables map to `backbone.bottom_up.*`, `backbone.fpn_lateral2.weight`, ... .
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from luminet_jax.detection import backbone as backbone_lib

STRIDES = (4, 8, 16, 32, 64)
# fvcore's c2_xavier_fill: kaiming_uniform_(a=1) = uniform with variance 1 / fan_in; bias 0.
xavier_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def upsample2x(x: jax.Array) -> jax.Array:
    """Nearest-neighbour x2 (F.interpolate(scale_factor=2, mode="nearest")), NHWC."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class FPN(nn.Module):
    """`__call__(images)` -> [p2, p3, p4, p5, p6], NHWC with `out_channels` channels each.

    Attributes:
      bottom_up: the ResNet (its outputs res2..res5).
      out_channels: FPN.OUT_CHANNELS (256).
      dtype: compute dtype.
    """

    bottom_up: nn.Module
    out_channels: int = 256
    dtype: Any = None

    @nn.compact
    def __call__(self, images: jax.Array) -> list[jax.Array]:
        feats = self.bottom_up(images)
        conv = lambda k, name: backbone_lib.Conv2d(  # noqa: E731
            self.out_channels,
            k,
            1,
            use_bias=True,
            norm=False,
            kernel_init=xavier_init,
            dtype=self.dtype,
            name=name,
        )
        stages = list(backbone_lib.STAGE_NAMES)  # res2..res5 -> levels 2..5
        results = []
        prev = None
        for name in reversed(stages):
            level = name[len("res") :]
            lateral = conv(1, f"fpn_lateral{level}")(feats[name])
            if prev is not None:
                top_down = upsample2x(prev)
                if top_down.shape[1:3] != lateral.shape[1:3]:
                    raise ValueError(
                        f"FPN needs input sides divisible by 32; {name} is "
                        f"{lateral.shape[1:3]} but the level above upsamples to "
                        f"{top_down.shape[1:3]}"
                    )
                lateral = lateral + top_down
            prev = lateral
            results.insert(0, conv(3, f"fpn_output{level}")(lateral))
        results.append(results[-1][:, ::2, ::2])  # max_pool2d(kernel 1, stride 2) of p5
        return results
