"""Faster R-CNN losses: detectron2's RPN and FastRCNNOutputLayers losses, static shapes.

RPN: binary cross-entropy on the sampled anchors (labels 0/1; -1 is ignored) and L1 on the
positives' deltas (smooth-L1 with beta 0), both summed and divided by
batch_size_per_image * images (detectron2 uses the configured sample size, not the count).
RoI head: softmax cross-entropy (background = class K, last) averaged over the sampled RoIs,
and L1 on the class-specific deltas of the foreground RoIs, summed and divided by the number
of sampled RoIs (all of them, foreground or not, as detectron2).

Data parallel (`axis_name`): each shard returns its local sum divided by the global
normalizer over the number of shards, so the step's `pmean` over the data axis gives
exactly the global-batch loss, and its gradients (DESIGN.md section 7: 8 devices equal 1).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from luminet_jax.detection import ops

RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)  # cfg.MODEL.RPN.BBOX_REG_WEIGHTS
ROI_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS


def _f32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def smooth_l1(x: jax.Array, beta: float) -> jax.Array:
    """fvcore's elementwise smooth-L1 of a difference x; beta < 1e-5 is plain L1."""
    ax = jnp.abs(x)
    if beta < 1e-5:
        return ax
    return jnp.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)


def _shard_normalizer(count: jax.Array, axis_name: str | None) -> jax.Array:
    """max(global count, 1) / number of shards: local sum / this, pmean-ed, = global mean."""
    count = jnp.asarray(count, jnp.float32)
    if axis_name is None:
        return jnp.maximum(count, 1.0)
    shards = lax.psum(1.0, axis_name)
    return jnp.maximum(lax.psum(count, axis_name), 1.0) / shards


def _safe_targets(gt: jax.Array, ref: jax.Array, keep: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Replaces unused (gt, reference) pairs by a unit box so encoding them stays finite."""
    unit = jnp.asarray([0.0, 0.0, 1.0, 1.0], ref.dtype)
    ref = jnp.where(keep[..., None], ref, unit)
    return jnp.where(keep[..., None], gt.astype(ref.dtype), ref), ref


def rpn_losses(
    objectness_logits: jax.Array,
    anchor_deltas: jax.Array,
    anchors: jax.Array,
    gt_labels: jax.Array,
    matched_gt_boxes: jax.Array,
    *,
    batch_size_per_image: int = 256,
    weights: Sequence[float] = RPN_BOX_WEIGHTS,
    smooth_l1_beta: float = 0.0,
    axis_name: str | None = None,
) -> dict[str, jax.Array]:
    """detectron2's `RPN.losses`.

    Args:
      objectness_logits: (B, N), all levels concatenated in anchor order.
      anchor_deltas: (B, N, 4).
      anchors: (N, 4).
      gt_labels: (B, N) in {-1, 0, 1} (`matching.rpn_targets`).
      matched_gt_boxes: (B, N, 4).
      batch_size_per_image: the sampler's size, the normalizer per image.
      weights, smooth_l1_beta: the RPN box coder weights and regression beta.
      axis_name: the data axis under shard_map, or None.

    Returns:
      {"loss_rpn_cls", "loss_rpn_loc"}, this shard's share of the global-batch losses.
    """
    logits = _f32(objectness_logits)
    labels = gt_labels.astype(jnp.int32)
    sampled = labels >= 0
    target = (labels == 1).astype(logits.dtype)
    bce = jnp.maximum(logits, 0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    cls_sum = jnp.sum(jnp.where(sampled, bce, 0))

    pos = labels == 1
    deltas = _f32(anchor_deltas)
    gt, ref = _safe_targets(
        matched_gt_boxes, jnp.broadcast_to(anchors, matched_gt_boxes.shape), pos
    )
    gt_deltas = lax.stop_gradient(ops.encode_boxes(gt, ref, weights=weights)).astype(deltas.dtype)
    reg = smooth_l1(deltas - gt_deltas, smooth_l1_beta).sum(-1)
    loc_sum = jnp.sum(jnp.where(pos, reg, 0))

    # A constant per image, so the global normalizer is the local one pmean-ed.
    normalizer = float(batch_size_per_image * labels.shape[0])
    return {"loss_rpn_cls": cls_sum / normalizer, "loss_rpn_loc": loc_sum / normalizer}


def fast_rcnn_losses(
    class_logits: jax.Array,
    box_deltas: jax.Array,
    proposals: jax.Array,
    gt_classes: jax.Array,
    gt_boxes: jax.Array,
    valid: jax.Array,
    *,
    num_classes: int,
    weights: Sequence[float] = ROI_BOX_WEIGHTS,
    smooth_l1_beta: float = 0.0,
    axis_name: str | None = None,
) -> dict[str, jax.Array]:
    """detectron2's `FastRCNNOutputLayers.losses` (softmax CE, class-specific regression).

    Args:
      class_logits: (B, S, K + 1), background last.
      box_deltas: (B, S, K * 4) class-specific, or (B, S, 4) class-agnostic.
      proposals: (B, S, 4) the sampled RoIs (`matching.roi_targets` "boxes").
      gt_classes: (B, S) in [0, K]; gt_boxes: (B, S, 4) matched ground truth.
      valid: (B, S) bool, the sampled slots.
      num_classes: K.
      weights, smooth_l1_beta: the RoI box coder weights and regression beta.
      axis_name: the data axis under shard_map, or None.

    Returns:
      {"loss_cls", "loss_box_reg"}, this shard's share of the global-batch losses.
    """
    logits = _f32(class_logits)
    classes = gt_classes.astype(jnp.int32)
    valid = valid.astype(bool)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.clip(classes, 0, num_classes)[..., None], -1)[..., 0]
    normalizer = _shard_normalizer(valid.sum(), axis_name)
    cls_sum = jnp.sum(jnp.where(valid, nll, 0))

    fg = valid & (classes >= 0) & (classes < num_classes)
    deltas = _f32(box_deltas)
    if deltas.shape[-1] != 4:
        deltas = deltas.reshape(*deltas.shape[:-1], num_classes, 4)
        pick = jnp.clip(classes, 0, num_classes - 1)[..., None, None]
        deltas = jnp.take_along_axis(deltas, pick, axis=-2)[..., 0, :]
    gt, ref = _safe_targets(gt_boxes, proposals, fg)
    gt_deltas = lax.stop_gradient(ops.encode_boxes(gt, ref, weights=weights)).astype(deltas.dtype)
    reg = smooth_l1(deltas - gt_deltas, smooth_l1_beta).sum(-1)
    reg_sum = jnp.sum(jnp.where(fg, reg, 0))
    return {"loss_cls": cls_sum / normalizer, "loss_box_reg": reg_sum / normalizer}


def fast_rcnn_metrics(
    class_logits: jax.Array,
    gt_classes: jax.Array,
    valid: jax.Array,
    *,
    axis_name: str | None = None,
) -> dict[str, jax.Array]:
    """detectron2's `_log_classification_stats` over the global batch's sampled RoIs.

    Returns cls_accuracy, fg_cls_accuracy and false_negative (foreground RoIs predicted as
    background) as fractions (0 where the denominator is 0; detectron2 skips logging then),
    and num_fg_samples / num_bg_samples per image. Equal on every shard.
    """
    background = class_logits.shape[-1] - 1
    pred = jnp.argmax(class_logits, axis=-1)
    classes = gt_classes.astype(pred.dtype)
    valid = valid.astype(bool)
    fg = valid & (classes >= 0) & (classes < background)
    counts = {
        "images": jnp.asarray(valid.shape[0], jnp.float32),
        "valid": valid.sum(),
        "fg": fg.sum(),
        "bg": (valid & (classes == background)).sum(),
        "accurate": (valid & (pred == classes)).sum(),
        "fg_accurate": (fg & (pred == classes)).sum(),
        "false_negative": (fg & (pred == background)).sum(),
    }
    counts = {k: v.astype(jnp.float32) for k, v in counts.items()}
    if axis_name is not None:
        counts = lax.psum(counts, axis_name)
    ratio = lambda a, b: jnp.where(b > 0, a / jnp.maximum(b, 1.0), 0.0)  # noqa: E731
    return {
        "cls_accuracy": ratio(counts["accurate"], counts["valid"]),
        "fg_cls_accuracy": ratio(counts["fg_accurate"], counts["fg"]),
        "false_negative": ratio(counts["false_negative"], counts["fg"]),
        "num_fg_samples": counts["fg"] / counts["images"],
        "num_bg_samples": counts["bg"] / counts["images"],
    }
