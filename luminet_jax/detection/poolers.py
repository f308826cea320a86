"""Multi-level RoIAlign for FPN RoI heads: detectron2's `ROIPooler` with ROIAlignV2.

Each RoI is pooled from one level, floor(4 + log2(sqrt(area) / 224 + 1e-8)) clamped to
[min_level, max_level] (detectron2's `assign_boxes_to_levels`, canonical box 224 on p4).
With static shapes the levels are flattened and concatenated, and one gather per RoI reads
its level through per-RoI offsets, sizes and scales (`ops.roi_align_flat`), instead of
detectron2's per-level index lists.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from luminet_jax.detection import ops

ROI_STRIDES = (4, 8, 16, 32)  # p2 .. p5
CANONICAL_BOX_SIZE = 224
CANONICAL_LEVEL = 4
# Reference: detectron2's box head uses POOLER_SAMPLING_RATIO 0 (adaptive ceil(roi / 7),
# data-dependent); static shapes need a fixed ratio, 2 here.
SAMPLING_RATIO = 2


def assign_boxes_to_levels(
    boxes: jax.Array,
    *,
    min_level: int = 2,
    max_level: int = 5,
    canonical_box_size: int = CANONICAL_BOX_SIZE,
    canonical_level: int = CANONICAL_LEVEL,
) -> jax.Array:
    """FPN level (absolute, e.g. 2..5) of each box (..., 4) -> (...) int32."""
    size = jnp.sqrt(jnp.maximum(ops.box_area(boxes), 0))  # degenerate boxes -> min_level
    level = jnp.floor(canonical_level + jnp.log2(size / canonical_box_size + 1e-8))
    return jnp.clip(level, min_level, max_level).astype(jnp.int32)


def multilevel_roi_align(
    features: Sequence[jax.Array],
    boxes: jax.Array,
    *,
    strides: Sequence[int] = ROI_STRIDES,
    output_size: int = 7,
    sampling_ratio: int = SAMPLING_RATIO,
    aligned: bool = True,
    canonical_box_size: int = CANONICAL_BOX_SIZE,
    canonical_level: int = CANONICAL_LEVEL,
) -> jax.Array:
    """Pools each RoI from its assigned level: (B, H_l, W_l, C) per level x (B, R, 4).

    Args:
      features: one NHWC map per level, in increasing stride order (p2..p5).
      boxes: (B, R, 4) in input pixels.
      strides: the levels' strides, powers of 2 forming a pyramid.

    Returns:
      (B, R, output_size, output_size, C), equal to `ops.roi_align` on each RoI's level with
      spatial_scale 1 / stride.
    """
    if len(features) != len(strides):
        raise ValueError(f"{len(features)} feature maps for {len(strides)} strides")
    min_level = round(math.log2(strides[0]))
    max_level = round(math.log2(strides[-1]))
    if [2 ** (min_level + i) for i in range(len(strides))] != list(strides):
        raise ValueError(f"strides {strides} are not a pyramid of powers of 2")
    b, _, _, c = features[0].shape
    level = (
        assign_boxes_to_levels(
            boxes,
            min_level=min_level,
            max_level=max_level,
            canonical_box_size=canonical_box_size,
            canonical_level=canonical_level,
        )
        - min_level
    )  # (B, R) in [0, num_levels)
    sizes = [f.shape[1] * f.shape[2] for f in features]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    flat = jnp.concatenate([f.reshape(b, -1, c) for f in features], axis=1)
    pick = lambda values, dtype: jnp.asarray(values, dtype)[level]  # noqa: E731
    return ops.roi_align_flat(
        flat,
        boxes,
        heights=pick([f.shape[1] for f in features], jnp.int32),
        widths=pick([f.shape[2] for f in features], jnp.int32),
        offsets=pick(starts, jnp.int32),
        spatial_scales=pick([1.0 / s for s in strides], flat.dtype),
        output_size=output_size,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
    )
