"""Anchors for an FPN RPN: detectron2's `DefaultAnchorGenerator` (offset 0.0).

Each level gets one size and three aspect ratios (height / width). Cell anchors are
centred at 0 (w = sqrt(size^2 / ratio), h = ratio * w) and shifted by stride * (x, y) for
every feature location; the order is location-major (row y, then column x), then the
cell anchors in (size, ratio) order, so a level's anchors line up with an RPN head output
of shape (B, H, W, A) reshaped to (B, H * W * A), as detectron2's do with its checkpoints.

Anchors depend only on static shapes, so they are computed with NumPy in float64 at trace
time and become constants.
"""

import math
from collections.abc import Sequence

import numpy as np

FPN_STRIDES = (4, 8, 16, 32, 64)  # p2 .. p6
FPN_SIZES = (32, 64, 128, 256, 512)  # One size per level (detectron2 FPN configs).
ASPECT_RATIOS = (0.5, 1.0, 2.0)
OFFSET = 0.0  # cfg.MODEL.ANCHOR_GENERATOR.OFFSET default.


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
    """Anchors centred at (0, 0), (len(sizes) * len(aspect_ratios), 4) x1y1x2y2."""
    out = []
    for size in sizes:
        area = float(size) ** 2
        for ratio in aspect_ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            out.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return np.asarray(out, np.float64)


def grid_anchors(
    grid_size: tuple[int, int], stride: int, cells: np.ndarray, offset: float = OFFSET
) -> np.ndarray:
    """All anchors of one level, (H * W * A, 4), index (y * W + x) * A + a."""
    grid_h, grid_w = grid_size
    xs = offset * stride + stride * np.arange(grid_w, dtype=np.float64)
    ys = offset * stride + stride * np.arange(grid_h, dtype=np.float64)
    shift_y, shift_x = np.meshgrid(ys, xs, indexing="ij")
    shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=-1).reshape(-1, 1, 4)
    return (shifts + cells[None]).reshape(-1, 4)


def num_cell_anchors(aspect_ratios: Sequence[float] = ASPECT_RATIOS) -> int:
    """Anchors per location for one size per level."""
    return len(aspect_ratios)


def fpn_anchors(
    grid_sizes: Sequence[tuple[int, int]],
    *,
    strides: Sequence[int] = FPN_STRIDES,
    sizes: Sequence[float] = FPN_SIZES,
    aspect_ratios: Sequence[float] = ASPECT_RATIOS,
    offset: float = OFFSET,
) -> list[np.ndarray]:
    """Anchors of each FPN level for feature maps of `grid_sizes` [(H_l, W_l), ...].

    Returns a list of float64 arrays (H_l * W_l * A, 4), one per level in p2..p6 order;
    concatenate them for the flat anchor list detectron2's RPN matches against.
    """
    if not len(grid_sizes) == len(strides) == len(sizes):
        raise ValueError(
            f"{len(grid_sizes)} feature maps, {len(strides)} strides, {len(sizes)} sizes"
        )
    return [
        grid_anchors(tuple(g), s, cell_anchors([size], aspect_ratios), offset)
        for g, s, size in zip(grid_sizes, strides, sizes, strict=True)
    ]
