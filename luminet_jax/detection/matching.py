"""Target assignment with static shapes: detectron2's Matcher and fixed-size fg/bg sampling.

Per-image functions (vmap or lax.map them over the batch). Ground truth is padded to a fixed
count G with a validity mask: padded boxes are never matched, and an image without valid
ground truth gets background everywhere (detectron2's empty-gt case). Sampling returns a
fixed number of slots with a validity mask instead of detectron2's variable-length index
lists. Random draws come from a per-image key: `image_keys(step_key, ...)` folds in the
GLOBAL image index (never the shard), so a batch sharded over 8 devices samples exactly as
on one device (DESIGN.md section 7).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from luminet_jax.detection import ops

RPN_IOU_THRESHOLDS = (0.3, 0.7)  # cfg.MODEL.RPN.IOU_THRESHOLDS / IOU_LABELS
RPN_IOU_LABELS = (0, -1, 1)
ROI_IOU_THRESHOLDS = (0.5,)  # cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS / IOU_LABELS
ROI_IOU_LABELS = (0, 1)


def image_keys(key: jax.Array, num_images: int, *, axis_name: str | None = None) -> jax.Array:
    """One key per local image, `fold_in(key, global image index)`.

    With `axis_name` (inside shard_map over a batch split evenly along that axis) the global
    index of local image i is axis_index * num_images + i; without it, i.
    """
    index = jnp.arange(num_images)
    if axis_name is not None:
        index = index + jax.lax.axis_index(axis_name) * num_images
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)


def match(
    quality: jax.Array,
    *,
    thresholds: Sequence[float],
    labels: Sequence[int],
    allow_low_quality_matches: bool = False,
    gt_valid: jax.Array | None = None,
    pred_valid: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """detectron2's `Matcher` on a (G, N) quality matrix (IoU of ground truth x predictions).

    Each prediction takes its best ground truth (first on ties); its label is labels[i] for
    the band thresholds[i-1] <= best < thresholds[i] (with -inf and inf at the ends). With
    `allow_low_quality_matches`, every prediction whose quality with some valid ground truth
    equals that ground truth's best quality gets label 1 (its match index is not changed, as
    in detectron2; note that a ground truth overlapping nothing has best quality 0, so it
    makes every prediction it does not overlap positive, exactly as detectron2 does).

    Args:
      quality: (G, N) >= 0.
      thresholds, labels: increasing thresholds and len(thresholds) + 1 labels in {-1, 0, 1}.
      allow_low_quality_matches: see above (True for the RPN).
      gt_valid: (G,) bool, False for padding (never matched); default all valid.
      pred_valid: (N,) bool, False for padding predictions (label -1); default all valid.

    Returns:
      matches (N,) int32 in [0, G) (0 where nothing is valid) and labels (N,) int32.
    """
    if len(labels) != len(thresholds) + 1:
        raise ValueError(f"{len(labels)} labels for {len(thresholds)} thresholds")
    num_gt, num_pred = quality.shape
    gt_valid = jnp.ones((num_gt,), bool) if gt_valid is None else gt_valid.astype(bool)
    pred_valid = jnp.ones((num_pred,), bool) if pred_valid is None else pred_valid.astype(bool)
    if num_gt == 0:
        matches = jnp.zeros((num_pred,), jnp.int32)
        return matches, jnp.where(pred_valid, labels[0], -1).astype(jnp.int32)
    # Padded ground truth scores -1: below every band, so it is never the best of a
    # prediction that has any valid ground truth; with none valid, the best is -1 and falls in
    # the lowest band (labels[0], detectron2's label for an image without ground truth).
    masked = jnp.where(gt_valid[:, None], quality, -1)
    best = masked.max(axis=0)
    matches = masked.argmax(axis=0).astype(jnp.int32)
    bounds = (-jnp.inf, *thresholds, jnp.inf)
    out = jnp.ones((num_pred,), jnp.int32)
    for label, low, high in zip(labels, bounds[:-1], bounds[1:], strict=True):
        out = jnp.where((best >= low) & (best < high), label, out)
    if allow_low_quality_matches:
        per_gt = jnp.where(pred_valid[None, :], quality, -jnp.inf).max(axis=1)  # (G,)
        is_best = (quality == per_gt[:, None]) & gt_valid[:, None] & pred_valid[None, :]
        out = jnp.where(is_best.any(axis=0), 1, out)
    return matches, jnp.where(pred_valid, out, -1).astype(jnp.int32)


def subsample(
    key: jax.Array,
    positive: jax.Array,
    negative: jax.Array,
    *,
    num_samples: int,
    positive_fraction: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """detectron2's `subsample_labels` in `num_samples` fixed slots.

    Draws min(#positive, int(num_samples * positive_fraction)) positives, then fills up to
    num_samples with negatives (as many as there are), each a uniform random subset.

    Args:
      key: the image's key.
      positive, negative: (N,) bool, disjoint.
      num_samples, positive_fraction: static.

    Returns:
      indices (num_samples,) int32 (positives first, then negatives, then padding 0),
      is_positive (num_samples,) bool, valid (num_samples,) bool.
    """
    n = positive.shape[0]
    quota = int(num_samples * positive_fraction)
    n_pos = jnp.minimum(positive.sum(), quota).astype(jnp.int32)
    n_neg = jnp.minimum(negative.sum(), num_samples - n_pos).astype(jnp.int32)
    key_pos, key_neg = jax.random.split(key)

    def draw(k, candidates, count):
        if count == 0:
            return jnp.zeros((num_samples,), jnp.int32)
        # Uniform random priorities; the `count` largest among the candidates are a uniform
        # random subset in random order. int32 draws make ties negligible even for 10^5+.
        priority = jax.random.randint(k, (n,), 0, jnp.iinfo(jnp.int32).max)
        _, idx = jax.lax.top_k(jnp.where(candidates, priority, -1), min(count, n))
        return jnp.pad(idx.astype(jnp.int32), (0, num_samples - idx.shape[0]))

    pos_idx = draw(key_pos, positive, quota)
    neg_idx = draw(key_neg, negative, num_samples)
    slot = jnp.arange(num_samples)
    is_pos = slot < n_pos
    valid = slot < n_pos + n_neg
    neg_slot = jnp.clip(slot - n_pos, 0, num_samples - 1)
    indices = jnp.where(is_pos, pos_idx, jnp.where(valid, neg_idx[neg_slot], 0))
    return indices.astype(jnp.int32), is_pos, valid


def rpn_targets(
    key: jax.Array,
    anchors: jax.Array,
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    *,
    batch_size_per_image: int = 256,
    positive_fraction: float = 0.5,
    thresholds: Sequence[float] = RPN_IOU_THRESHOLDS,
    labels: Sequence[int] = RPN_IOU_LABELS,
) -> tuple[jax.Array, jax.Array]:
    """detectron2's `RPN.label_and_sample_anchors` for one image.

    Args:
      key: the image's key.
      anchors: (N, 4), all levels concatenated.
      gt_boxes: (G, 4) padded; gt_valid: (G,) bool.

    Returns:
      labels (N,) int32: 1 sampled positive, 0 sampled negative, -1 not sampled/ignored;
      matched_gt_boxes (N, 4): each anchor's best valid ground truth (zeros without any).
    """
    iou = ops.box_iou(gt_boxes, anchors)
    matches, match_labels = match(
        iou,
        thresholds=thresholds,
        labels=labels,
        allow_low_quality_matches=True,
        gt_valid=gt_valid,
    )
    idx, is_pos, valid = subsample(
        key,
        match_labels == 1,
        match_labels == 0,
        num_samples=batch_size_per_image,
        positive_fraction=positive_fraction,
    )
    n = anchors.shape[0]
    target = jnp.full((n,), -1, jnp.int32)
    target = target.at[jnp.where(valid, idx, n)].set(is_pos.astype(jnp.int32), mode="drop")
    matched = jnp.where(gt_valid.any(), gt_boxes[matches], 0).astype(gt_boxes.dtype)
    return target, matched


def add_ground_truth_to_proposals(
    proposals: jax.Array, proposal_valid: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Appends the (padded) ground truth to the (padded) proposals: (P + G, 4), (P + G,)."""
    boxes = jnp.concatenate([proposals, gt_boxes.astype(proposals.dtype)], axis=0)
    return boxes, jnp.concatenate([proposal_valid.astype(bool), gt_valid.astype(bool)])


def roi_targets(
    key: jax.Array,
    proposals: jax.Array,
    proposal_valid: jax.Array,
    gt_boxes: jax.Array,
    gt_classes: jax.Array,
    gt_valid: jax.Array,
    *,
    num_classes: int,
    batch_size_per_image: int = 512,
    positive_fraction: float = 0.25,
    thresholds: Sequence[float] = ROI_IOU_THRESHOLDS,
    labels: Sequence[int] = ROI_IOU_LABELS,
    append_gt: bool = True,
) -> dict[str, jax.Array]:
    """detectron2's `ROIHeads.label_and_sample_proposals` for one image.

    Args:
      key: the image's key.
      proposals: (P, 4) padded; proposal_valid: (P,) bool.
      gt_boxes: (G, 4), gt_classes: (G,) int in [0, num_classes), gt_valid: (G,) bool.
      num_classes: K; background is class K (last, as detectron2).
      append_gt: add the ground truth to the proposals first (PROPOSAL_APPEND_GT).

    Returns:
      {"boxes": (S, 4) sampled proposals, "classes": (S,) int32 in [0, K] (K = background;
       K also in invalid slots),
       "gt_boxes": (S, 4) matched ground truth (meaningful for foreground only),
       "valid": (S,) bool, "foreground": (S,) bool}, S = batch_size_per_image, foreground
      slots first (detectron2 concatenates sampled fg then bg).
    """
    if append_gt:
        proposals, proposal_valid = add_ground_truth_to_proposals(
            proposals, proposal_valid, gt_boxes, gt_valid
        )
    iou = ops.box_iou(gt_boxes.astype(proposals.dtype), proposals)
    matches, match_labels = match(
        iou, thresholds=thresholds, labels=labels, gt_valid=gt_valid, pred_valid=proposal_valid
    )
    idx, is_pos, valid = subsample(
        key,
        match_labels == 1,
        match_labels == 0,
        num_samples=batch_size_per_image,
        positive_fraction=positive_fraction,
    )
    sampled_gt = matches[idx]
    classes = jnp.where(is_pos, gt_classes[sampled_gt], num_classes).astype(jnp.int32)
    matched = jnp.where(gt_valid.any(), gt_boxes[sampled_gt], 0).astype(proposals.dtype)
    return {
        "boxes": proposals[idx],
        "classes": classes,
        "gt_boxes": matched,
        "valid": valid,
        "foreground": is_pos,
    }
