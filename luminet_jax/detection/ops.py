"""Box ops for Faster R-CNN: IoU, greedy NMS, RoIAlign, box coding, clipping.

All functions are pure, jit-compatible with static shapes, and work in the input dtype
(float64 under x64; RoIAlign computes its sample coordinates in at least float32).
Boxes are x1y1x2y2 in input-image pixels; features are NHWC.

Semantics follow the references the detectron2 checkpoints were trained with:
- `box_iou`: detectron2's `pairwise_iou` (0 where boxes do not intersect, so zero-area
  padding boxes give 0, never NaN).
- `nms`, `batched_nms`: torchvision's CPU `nms` kernel (greedy in descending score order,
  a box is suppressed when its IoU with a kept box is strictly greater than the threshold)
  and `batched_nms`'s coordinate-offset trick for per-class NMS; computed in blocks of
  sorted boxes with vectorized IoU matrices (the same kept boxes, not a serial loop).
- `roi_align`: torchvision's `roi_align` forward, edge rules included; no gradient w.r.t.
  the boxes (torchvision defines none).
- `encode_boxes` / `decode_boxes`: detectron2's `Box2BoxTransform` (widths x2 - x1, no +1).
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

SCALE_CLAMP = math.log(1000.0 / 16)  # detectron2's _DEFAULT_SCALE_CLAMP for dw, dh.
NMS_BLOCK = 256  # `nms` boxes per block


def box_area(boxes: jax.Array) -> jax.Array:
    """(x2 - x1) * (y2 - y1) over the last axis, (..., 4) -> (...)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
    """Pairwise IoU, (N, 4) x (M, 4) -> (N, M); 0 where the intersection is empty."""
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = jnp.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = jnp.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = jnp.maximum(rb - lt, 0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return jnp.where(inter > 0, inter / jnp.where(inter > 0, union, 1), 0)


def _varying_axes(x: jax.Array) -> frozenset:
    """The shard_map manual axes `x` varies over (empty outside shard_map)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "mat", None)  # jax >= 0.10: manual axis types
    return frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))


def _vary_like(tree, axes: frozenset):
    """`tree`'s arrays cast to vary over `axes`: under shard_map(check_vma=True) a loop's
    carry keeps one type, and the body's outputs vary over the axes its inputs vary over."""

    def cast(x):
        missing = axes - _varying_axes(x)
        return jax.lax.pcast(x, tuple(sorted(missing)), to="varying") if missing else x

    return jax.tree.map(cast, tree)


def _greedy_within(alive: jax.Array, suppresses: jax.Array, axes: frozenset) -> jax.Array:
    """Greedy keep flags of B boxes in visiting order: box j is kept iff alive[j] and no kept
    box i < j has suppresses[i, j] (`suppresses`: IoU > threshold, upper triangle only).

    Sweeps keep <- alive & ~any_i(keep[i] & suppresses[i]) from keep = alive until nothing
    changes. Exact: a fixed point satisfies the greedy recurrence, whose solution is unique;
    and after t sweeps the first t flags are final, so it stops within B + 1 sweeps (in
    practice after the longest chain of suppressions: a few).
    """

    def sweep(carry):
        keep, _ = carry
        new = alive & ~jnp.any(keep[:, None] & suppresses, axis=0)
        return new, jnp.any(new != keep)

    init = _vary_like((alive, jnp.asarray(True)), axes)
    keep, _ = jax.lax.while_loop(lambda carry: carry[1], sweep, init)
    return keep


def _sorted_padded(
    boxes: jax.Array, scores: jax.Array, mask: jax.Array | None, size: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`nms`'s visiting order: (boxes sorted and zero-padded to `size` rows, their indices
    (-1 in the padding), the number of valid boxes). Valid boxes first, each part by
    descending score; the sort is stable, so equal scores keep index order."""
    n = boxes.shape[0]
    valid = jnp.ones((n,), bool) if mask is None else mask.astype(bool)
    _, _, order = jax.lax.sort(
        (~valid, -scores, jnp.arange(n, dtype=jnp.int32)), num_keys=2, is_stable=True
    )
    sorted_boxes = jnp.pad(boxes[order], ((0, size - n), (0, 0)))
    order = jnp.pad(order, (0, size - n), constant_values=-1)
    return sorted_boxes, order, valid.sum(dtype=jnp.int32)


def nms(
    boxes: jax.Array,
    scores: jax.Array,
    *,
    iou_threshold: float,
    max_outputs: int,
    mask: jax.Array | None = None,
    block_size: int = NMS_BLOCK,
) -> tuple[jax.Array, jax.Array]:
    """Greedy non-maximum suppression with a static output size, computed in blocks.

    Visits boxes in descending score order (ties: lower index first, as a stable sort) and
    keeps a box unless a kept box has IoU strictly greater than `iou_threshold` with it:
    torchvision's `nms`. Computed `block_size` sorted boxes at a time, as the blocked NMS of
    TPU detection codebases: a block's boxes are suppressed by the boxes kept so far (one
    (slots, block) IoU matrix), then the block's own greedy order is resolved by a fixed
    point of its (block, block) IoU matrix (`_greedy_within`). Blocks stop once
    `max_outputs` boxes are kept or the valid boxes run out, so a few vectorized steps per
    block replace a serial step per kept box (up to 1,000 for the RPN).

    Args:
      boxes: (N, 4) x1y1x2y2.
      scores: (N,).
      iou_threshold: suppression threshold.
      max_outputs: static number of output slots; greedy stops after this many kept boxes
        (the kept boxes are then the first `max_outputs` of torchvision's `nms` result).
      mask: optional (N,) bool; boxes with False are never kept and suppress nothing.
      block_size: boxes per block (static): each block step holds a block x (block +
        max_outputs) IoU matrix.

    Returns:
      indices: (max_outputs,) int32 into `boxes`, in keep order, padded with -1.
      count: () int32 number of kept boxes.
    """
    n = boxes.shape[0]
    if n == 0 or max_outputs <= 0:
        return jnp.full((max_outputs,), -1, jnp.int32), jnp.zeros((), jnp.int32)
    block = max(1, min(int(block_size), n))
    num_blocks = -(-n // block)
    sorted_boxes, order, num_valid = _sorted_padded(boxes, scores, mask, num_blocks * block)
    slots = max_outputs + block  # < max_outputs kept before a block, <= block kept in it
    upper = jnp.arange(block)[:, None] < jnp.arange(block)[None, :]
    axes = _varying_axes(sorted_boxes) | _varying_axes(num_valid)

    def cond(carry):
        b, _, _, count = carry
        return (b < num_blocks) & (count < max_outputs) & (b * block < num_valid)

    def body(carry):
        b, kept_boxes, kept_index, count = carry
        start = b * block
        blk_boxes = jax.lax.dynamic_slice_in_dim(sorted_boxes, start, block)
        blk_index = jax.lax.dynamic_slice_in_dim(order, start, block)
        alive = start + jnp.arange(block) < num_valid
        # Suppressed by a box kept in an earlier block (rows: the suppressors).
        used = jnp.arange(slots) < count
        over = box_iou(kept_boxes, blk_boxes) > iou_threshold
        alive &= ~jnp.any(used[:, None] & over, axis=0)
        suppresses = upper & (box_iou(blk_boxes, blk_boxes) > iou_threshold)
        keep = _greedy_within(alive, suppresses, axes)
        at = jnp.where(keep, count + jnp.cumsum(keep) - 1, slots)  # slots: dropped
        kept_boxes = kept_boxes.at[at].set(blk_boxes, mode="drop")
        kept_index = kept_index.at[at].set(blk_index, mode="drop")
        return b + 1, kept_boxes, kept_index, count + keep.sum(dtype=jnp.int32)

    init = (
        jnp.zeros((), jnp.int32),
        jnp.zeros((slots, 4), sorted_boxes.dtype),
        jnp.full((slots,), -1, jnp.int32),
        jnp.zeros((), jnp.int32),
    )
    _, _, kept_index, count = jax.lax.while_loop(cond, body, _vary_like(init, axes))
    count = jnp.minimum(count, max_outputs)
    indices = jnp.where(jnp.arange(max_outputs) < count, kept_index[:max_outputs], -1)
    return indices, count


def batched_nms(
    boxes: jax.Array,
    scores: jax.Array,
    idxs: jax.Array,
    *,
    iou_threshold: float,
    max_outputs: int,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """NMS within each category `idxs` (N,) int: torchvision's coordinate-offset trick.

    Boxes of different categories are shifted apart by `idxs * (max coordinate + 1)`, the
    maximum taken over the boxes in `mask`, so they never overlap. Same outputs as `nms`.
    """
    valid = jnp.ones(scores.shape, bool) if mask is None else mask.astype(bool)
    max_coordinate = jnp.max(jnp.where(valid[:, None], boxes, -jnp.inf), initial=-jnp.inf)
    max_coordinate = jnp.where(jnp.isfinite(max_coordinate), max_coordinate, 0)
    offsets = idxs.astype(boxes.dtype) * (max_coordinate + 1)
    return nms(
        boxes + offsets[:, None],
        scores,
        iou_threshold=iou_threshold,
        max_outputs=max_outputs,
        mask=valid,
    )


def _bilinear_axis(coord: jax.Array, size: jax.Array):
    """torchvision's per-axis RoIAlign sample rule for coordinates `coord` on an axis of `size`.

    Returns (low index, high index, weight of low, weight of high, valid); the 2-D weights
    are products of the per-axis ones, and a sample is zero unless valid on both axes.
    """
    valid = (coord >= -1.0) & (coord <= size)  # NaN coordinates are invalid.
    c = jnp.where(valid, jnp.maximum(coord, 0), 0)
    low = jnp.floor(c).astype(jnp.int32)
    at_end = low >= size - 1
    last = (size - 1).astype(jnp.int32)
    low = jnp.where(at_end, last, low)
    high = jnp.where(at_end, last, low + 1)
    c = jnp.where(at_end, low.astype(c.dtype), c)
    frac = c - low.astype(c.dtype)
    return low, high, 1.0 - frac, frac, valid


def roi_align_flat(
    flat_features: jax.Array,
    boxes: jax.Array,
    *,
    heights: jax.Array,
    widths: jax.Array,
    offsets: jax.Array,
    spatial_scales: jax.Array,
    output_size: int,
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> jax.Array:
    """RoIAlign by gather from row-major flattened maps, one map choice per RoI.

    The kernel behind `roi_align` and the multi-level pooler: RoI r of image b pools from
    the map of size heights[b, r] x widths[b, r] stored at rows offsets[b, r] onward of
    flat_features[b] (row y * width + x), with its boxes scaled by spatial_scales[b, r].

    Args:
      flat_features: (B, L, C).
      boxes: (B, R, 4) in input pixels; carries no gradient (as torchvision's).
      heights, widths, offsets: (B, R) int; spatial_scales: (B, R) float.
      output_size, sampling_ratio, aligned: as in `roi_align`.

    Returns:
      (B, R, output_size, output_size, C).
    """
    if sampling_ratio <= 0:
        raise ValueError(f"sampling_ratio must be > 0 for static shapes, got {sampling_ratio}")
    # Sample coordinates and weights in at least float32 (bf16 cannot address pixels of a
    # large map); the weighted sum is accumulated in that type and cast back.
    dtype = jnp.promote_types(jnp.promote_types(flat_features.dtype, boxes.dtype), jnp.float32)
    boxes = jax.lax.stop_gradient(boxes).astype(dtype)
    scale = spatial_scales.astype(dtype)
    shift = 0.5 if aligned else 0.0
    x1 = boxes[..., 0] * scale - shift
    y1 = boxes[..., 1] * scale - shift
    x2 = boxes[..., 2] * scale - shift
    y2 = boxes[..., 3] * scale - shift
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # Legacy Detectron: malformed RoIs become at least 1 x 1.
        roi_w, roi_h = jnp.maximum(roi_w, 1.0), jnp.maximum(roi_h, 1.0)
    bin_w, bin_h = roi_w / output_size, roi_h / output_size

    # Sample s = p * sampling_ratio + i sits at start + p * bin + (i + 0.5) * bin / ratio.
    bins = jnp.repeat(jnp.arange(output_size, dtype=dtype), sampling_ratio)
    within = jnp.tile(jnp.arange(sampling_ratio, dtype=dtype) + 0.5, output_size)

    def samples(start, bin_size):  # (B, R) -> (B, R, S)
        return (
            start[..., None]
            + bins * bin_size[..., None]
            + within * bin_size[..., None] / sampling_ratio
        )

    h = heights.astype(dtype)[..., None]
    w = widths.astype(dtype)[..., None]
    y_lo, y_hi, wy_lo, wy_hi, y_ok = _bilinear_axis(samples(y1, bin_h), h)
    x_lo, x_hi, wx_lo, wx_hi, x_ok = _bilinear_axis(samples(x1, bin_w), w)
    ok = (y_ok[..., :, None] & x_ok[..., None, :]).astype(dtype)  # (B, R, S, S)

    row_base = offsets.astype(jnp.int32)[..., None, None]
    width_i = widths.astype(jnp.int32)[..., None, None]
    gather = jax.vmap(lambda f, idx: f[idx])  # (L, C), (R, S, S) -> (R, S, S, C) per image.
    out = 0
    for yi, wy in ((y_lo, wy_lo), (y_hi, wy_hi)):
        for xi, wx in ((x_lo, wx_lo), (x_hi, wx_hi)):
            idx = row_base + yi[..., :, None] * width_i + xi[..., None, :]
            weight = wy[..., :, None] * wx[..., None, :] * ok
            out = out + weight[..., None] * gather(flat_features, idx).astype(dtype)
    out = out.reshape(*out.shape[:2], output_size, sampling_ratio, output_size, sampling_ratio, -1)
    out = out.sum(axis=(3, 5)) / (sampling_ratio * sampling_ratio)
    return out.astype(flat_features.dtype)


def roi_align(
    features: jax.Array,
    boxes: jax.Array,
    *,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> jax.Array:
    """torchvision's `roi_align` on NHWC features, (B, H, W, C) x (B, R, 4) -> (B, R, o, o, C).

    Box coordinates are multiplied by `spatial_scale` and, with `aligned`, shifted by -0.5
    (detectron2's ROIAlignV2); without it, RoI width and height are clamped to >= 1. Each of
    the o x o bins averages sampling_ratio^2 bilinear samples; a sample with y < -1 or
    y > H (likewise x) contributes 0, any other is clamped into [0, H - 1] first (torchvision's
    rules: y <= 0 reads row 0, y_low >= H - 1 reads row H - 1 only). Differentiable w.r.t.
    `features`; `sampling_ratio` must be > 0 (static shapes).
    """
    b, height, width, c = features.shape
    r = boxes.shape[1]
    full = lambda v: jnp.full((b, r), v)  # noqa: E731
    return roi_align_flat(
        features.reshape(b, height * width, c),
        boxes,
        heights=full(height),
        widths=full(width),
        offsets=full(0),
        spatial_scales=full(spatial_scale).astype(jnp.promote_types(boxes.dtype, jnp.float32)),
        output_size=output_size,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
    )


def encode_boxes(gt: jax.Array, anchors: jax.Array, *, weights: Sequence[float]) -> jax.Array:
    """detectron2's `Box2BoxTransform.get_deltas`: (..., 4) targets w.r.t. anchors -> deltas."""
    wx, wy, ww, wh = weights
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    ax = anchors[..., 0] + 0.5 * aw
    ay = anchors[..., 1] + 0.5 * ah
    gw = gt[..., 2] - gt[..., 0]
    gh = gt[..., 3] - gt[..., 1]
    gx = gt[..., 0] + 0.5 * gw
    gy = gt[..., 1] + 0.5 * gh
    return jnp.stack(
        [
            wx * (gx - ax) / aw,
            wy * (gy - ay) / ah,
            ww * jnp.log(gw / aw),
            wh * jnp.log(gh / ah),
        ],
        axis=-1,
    )


def decode_boxes(
    deltas: jax.Array,
    anchors: jax.Array,
    *,
    weights: Sequence[float],
    scale_clamp: float = SCALE_CLAMP,
) -> jax.Array:
    """detectron2's `Box2BoxTransform.apply_deltas`: (..., 4) deltas on anchors -> boxes.

    dw and dh (after dividing by their weights) are clamped above at `scale_clamp`.
    For class-specific deltas reshape them to (N, K, 4) and pass anchors[:, None].
    """
    wx, wy, ww, wh = weights
    anchors = anchors.astype(deltas.dtype)
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    ax = anchors[..., 0] + 0.5 * aw
    ay = anchors[..., 1] + 0.5 * ah
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = jnp.minimum(deltas[..., 2] / ww, scale_clamp)
    dh = jnp.minimum(deltas[..., 3] / wh, scale_clamp)
    cx = dx * aw + ax
    cy = dy * ah + ay
    pw = jnp.exp(dw) * aw
    ph = jnp.exp(dh) * ah
    return jnp.stack([cx - 0.5 * pw, cy - 0.5 * ph, cx + 0.5 * pw, cy + 0.5 * ph], axis=-1)


def clip_boxes(boxes: jax.Array, height, width) -> jax.Array:
    """Clamp x into [0, width] and y into [0, height] (detectron2's `Boxes.clip`).

    `height`/`width` are scalars or arrays broadcastable to boxes.shape[:-1] (per image).
    """
    height = jnp.asarray(height, boxes.dtype)[..., None]
    width = jnp.asarray(width, boxes.dtype)[..., None]
    upper = jnp.concatenate([width, height, width, height], axis=-1)
    return jnp.clip(boxes, 0, upper)
