"""detectron2's StandardROIHeads (box branch only): sampling, pooling, box head, predictor.

- Sampling (`sample_rois`): `matching.roi_targets` per image (ground truth appended, 512 RoIs
  with 25% foreground by default), keys from the global image index.
- Pooling: ROIAlignV2 (aligned) 7x7 from p2..p5 by `poolers.multilevel_roi_align`.
- `box_head` (FastRCNNConvFCHead): flatten, `fc1` + ReLU, `fc2` + ReLU (1024 wide);
  c2_xavier_fill init. The pooled (7, 7, C) NHWC features are flattened in PyTorch's (C, 7, 7)
  order so that detectron2's fc1 weight converts by a plain transpose.
- `box_predictor` (FastRCNNOutputLayers): `cls_score` (K + 1, background last; normal 0.01)
  and class-specific `bbox_pred` (4K; normal 0.001), biases 0.
- Inference (`detections`): softmax, per-class decode (weights 10, 10, 5, 5) and clip,
  score > 0.05, per-class NMS 0.5, the 100 best per image, padded with a validity mask
  (detectron2's `fast_rcnn_inference_single_image`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from luminet_jax.detection import fpn as fpn_lib
from luminet_jax.detection import losses, matching, ops, poolers

BATCH_SIZE_PER_IMAGE, POSITIVE_FRACTION = 512, 0.25
SCORE_THRESH, NMS_THRESH, DETECTIONS_PER_IMAGE = 0.05, 0.5, 100
POOLER_RESOLUTION = 7


class BoxHead(nn.Module):
    """FastRCNNConvFCHead with `num_fc` FC layers of width `fc_dim` (no convs)."""

    fc_dim: int = 1024
    num_fc: int = 2
    dtype: Any = None

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        # (..., 7, 7, C) -> (..., C * 7 * 7) in PyTorch's NCHW flatten order.
        x = jnp.moveaxis(pooled, -1, -3)
        x = x.reshape(*x.shape[:-3], -1)
        for k in range(self.num_fc):
            x = nn.Dense(
                self.fc_dim,
                kernel_init=fpn_lib.xavier_init,
                dtype=self.dtype,
                name=f"fc{k + 1}",
            )(x)
            x = nn.relu(x)
        return x


class BoxPredictor(nn.Module):
    """FastRCNNOutputLayers: (cls_score (..., K + 1), bbox_pred (..., 4K)), float32."""

    num_classes: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        scores = nn.Dense(
            self.num_classes + 1,
            kernel_init=nn.initializers.normal(0.01),
            dtype=self.dtype,
            name="cls_score",
        )(x)
        deltas = nn.Dense(
            4 * self.num_classes,
            kernel_init=nn.initializers.normal(0.001),
            dtype=self.dtype,
            name="bbox_pred",
        )(x)
        return scores.astype(jnp.float32), deltas.astype(jnp.float32)


class ROIHeads(nn.Module):
    """The `roi_heads` scope: `__call__(p2..p5 features, rois (B, R, 4))` -> (logits, deltas)."""

    num_classes: int
    fc_dim: int = 1024
    num_fc: int = 2
    pooler_resolution: int = POOLER_RESOLUTION
    sampling_ratio: int = poolers.SAMPLING_RATIO
    dtype: Any = None

    @nn.compact
    def __call__(self, features: Sequence[jax.Array], rois: jax.Array):
        pooled = poolers.multilevel_roi_align(
            list(features)[: len(poolers.ROI_STRIDES)],
            rois,
            strides=poolers.ROI_STRIDES,
            output_size=self.pooler_resolution,
            sampling_ratio=self.sampling_ratio,
            aligned=True,
        )
        x = BoxHead(self.fc_dim, self.num_fc, self.dtype, name="box_head")(pooled)
        return BoxPredictor(self.num_classes, self.dtype, name="box_predictor")(x)


def sample_rois(
    key: jax.Array,
    proposals: dict[str, jax.Array],
    gt_boxes: jax.Array,
    gt_classes: jax.Array,
    gt_valid: jax.Array,
    *,
    num_classes: int,
    batch_size_per_image: int = BATCH_SIZE_PER_IMAGE,
    positive_fraction: float = POSITIVE_FRACTION,
    axis_name: str | None = None,
) -> dict[str, jax.Array]:
    """`matching.roi_targets` over the batch: each (B, S, ...) with S = batch_size_per_image.

    Returns {"boxes", "classes" (K = background, also in invalid slots), "gt_boxes",
    "valid", "foreground"}; all without gradient.
    """
    b = gt_boxes.shape[0]
    keys = matching.image_keys(key, b, axis_name=axis_name)
    fn = lambda k, p, pv, g, c, v: matching.roi_targets(  # noqa: E731
        k,
        p,
        pv,
        g,
        c,
        v,
        num_classes=num_classes,
        batch_size_per_image=batch_size_per_image,
        positive_fraction=positive_fraction,
    )
    out = jax.vmap(fn)(
        keys,
        jax.lax.stop_gradient(proposals["boxes"]),
        proposals["valid"],
        gt_boxes.astype(proposals["boxes"].dtype),
        gt_classes,
        gt_valid,
    )
    return jax.tree.map(jax.lax.stop_gradient, out)


def box_losses(
    class_logits: jax.Array,
    box_deltas: jax.Array,
    rois: dict[str, jax.Array],
    *,
    num_classes: int,
    axis_name: str | None = None,
) -> dict[str, jax.Array]:
    """`losses.fast_rcnn_losses` on the sampled RoIs: {"loss_cls", "loss_box_reg"}."""
    return losses.fast_rcnn_losses(
        class_logits,
        box_deltas,
        rois["boxes"],
        rois["classes"],
        rois["gt_boxes"],
        rois["valid"],
        num_classes=num_classes,
        axis_name=axis_name,
    )


def _detections_one(logits, deltas, boxes, valid, image_size, *, score_thresh, nms_thresh, topk):
    """One image: (R, K + 1), (R, 4K), (R, 4), (R,), (2,) -> detections with `topk` slots."""
    r, k1 = logits.shape
    k = k1 - 1
    scores = jax.nn.softmax(logits, axis=-1)[:, :k]  # (R, K), background dropped
    pred = ops.decode_boxes(
        deltas.reshape(r, k, 4), boxes[:, None, :], weights=losses.ROI_BOX_WEIGHTS
    )  # (R, K, 4)
    finite = jnp.isfinite(pred).all(axis=(1, 2)) & jnp.isfinite(scores).all(axis=1)
    pred = ops.clip_boxes(jnp.where(finite[:, None, None], pred, 0), image_size[0], image_size[1])
    keep = (valid & finite)[:, None] & (scores > score_thresh)  # (R, K)
    flat_boxes = pred.reshape(r * k, 4)
    flat_scores = scores.reshape(r * k)
    flat_classes = jnp.tile(jnp.arange(k, dtype=jnp.int32), r)
    idx, _ = ops.batched_nms(
        flat_boxes,
        flat_scores,
        flat_classes,
        iou_threshold=nms_thresh,
        max_outputs=topk,
        mask=keep.reshape(r * k),
    )
    ok = idx >= 0
    safe = jnp.maximum(idx, 0)
    return {
        "boxes": jnp.where(ok[:, None], flat_boxes[safe], 0),
        "scores": jnp.where(ok, flat_scores[safe], 0),
        "classes": jnp.where(ok, flat_classes[safe], -1),
        "valid": ok,
    }


def detections(
    class_logits: jax.Array,
    box_deltas: jax.Array,
    proposals: dict[str, jax.Array],
    image_sizes: jax.Array,
    *,
    score_thresh: float = SCORE_THRESH,
    nms_thresh: float = NMS_THRESH,
    detections_per_image: int = DETECTIONS_PER_IMAGE,
) -> dict[str, jax.Array]:
    """Final detections per image (see the module docstring).

    Args:
      class_logits: (B, R, K + 1); box_deltas: (B, R, 4K); proposals: {"boxes" (B, R, 4),
        "valid" (B, R)}; image_sizes: (B, 2) valid (h, w).

    Returns:
      {"boxes" (B, D, 4) padded-image pixels, "scores" (B, D), "classes" (B, D) int32 in
      [0, K) (-1 in padding), "valid" (B, D) bool}, D = detections_per_image, descending score.
    """
    fn = lambda lg, dl, bx, v, s: _detections_one(  # noqa: E731
        lg,
        dl,
        bx,
        v,
        s,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        topk=detections_per_image,
    )
    return jax.vmap(fn)(
        class_logits.astype(jnp.float32),
        box_deltas.astype(jnp.float32),
        proposals["boxes"].astype(jnp.float32),
        proposals["valid"],
        jnp.asarray(image_sizes),
    )
