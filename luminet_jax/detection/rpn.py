"""detectron2's RPN for FPN: the shared StandardRPNHead, proposals and training losses.

Head (shared over p2..p6): `conv` 3x3 + ReLU, `objectness_logits` 1x1 (A outputs) and
`anchor_deltas` 1x1 (4A), normal(0.01) init, bias 0. Its outputs are flattened as detectron2
does, location-major then anchor: logits (B, H * W * A) and deltas (B, H * W * A, 4) (the
4A channels are anchor-major, a * 4 + coordinate), matching `anchors.fpn_anchors`.

Proposals (`find_top_proposals`, detectron2's `find_top_rpn_proposals` with static shapes):
per level the `pre_nms_topk` best logits (2000 train / 1000 test), decoded with weights
(1, 1, 1, 1), non-finite ones dropped, clipped to the image's valid size, empty ones dropped
(sides > min_box_size), NMS 0.7 over the concatenation batched by level, the first
`post_nms_topk` kept (1000), padded with a validity mask. Proposals carry no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from luminet_jax.detection import anchors as anchors_lib
from luminet_jax.detection import backbone as backbone_lib
from luminet_jax.detection import losses, matching, ops

NMS_THRESH = 0.7
PRE_NMS_TOPK_TRAIN, PRE_NMS_TOPK_TEST = 2000, 1000  # per level (FPN configs)
POST_NMS_TOPK_TRAIN, POST_NMS_TOPK_TEST = 1000, 1000  # per image
BATCH_SIZE_PER_IMAGE, POSITIVE_FRACTION = 256, 0.5
head_init = nn.initializers.normal(0.01)


class RPNHead(nn.Module):
    """detectron2's StandardRPNHead; `__call__(features)` -> (logits list, deltas list)."""

    num_anchors: int = 3
    dtype: Any = None

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
        c = features[0].shape[-1]
        conv = lambda f, k, name: backbone_lib.Conv2d(  # noqa: E731
            f, k, 1, use_bias=True, norm=False, kernel_init=head_init, dtype=self.dtype, name=name
        )
        conv3, obj, deltas = (
            conv(c, 3, "conv"),
            conv(self.num_anchors, 1, "objectness_logits"),
            conv(4 * self.num_anchors, 1, "anchor_deltas"),
        )
        all_logits, all_deltas = [], []
        for x in features:
            t = nn.relu(conv3(x))
            b = x.shape[0]
            all_logits.append(obj(t).reshape(b, -1).astype(jnp.float32))
            all_deltas.append(deltas(t).reshape(b, -1, 4).astype(jnp.float32))
        return all_logits, all_deltas


class ProposalGenerator(nn.Module):
    """detectron2's `proposal_generator` scope: holds `rpn_head` (the only variables)."""

    num_anchors: int = 3
    dtype: Any = None

    @nn.compact
    def __call__(self, features):
        return RPNHead(self.num_anchors, self.dtype, name="rpn_head")(features)


def level_anchors(features: Sequence[jax.Array]) -> list[np.ndarray]:
    """Anchors of each level (float64 NumPy constants) for feature maps p2..p6."""
    return anchors_lib.fpn_anchors([f.shape[1:3] for f in features])


def _top_proposals_one(
    level_logits: Sequence[jax.Array],
    level_deltas: Sequence[jax.Array],
    level_anchors: Sequence[jax.Array],
    image_size: jax.Array,
    *,
    pre_nms_topk: int,
    post_nms_topk: int,
    nms_thresh: float,
    min_box_size: float,
):
    """One image: lists of (N_l,), (N_l, 4), (N_l, 4) -> boxes (P, 4), logits (P,), valid (P,)."""
    boxes, scores, lvl = [], [], []
    for i, (logits, deltas, anch) in enumerate(
        zip(level_logits, level_deltas, level_anchors, strict=True)
    ):
        k = min(pre_nms_topk, logits.shape[0])
        top, idx = jax.lax.top_k(logits, k)
        boxes.append(ops.decode_boxes(deltas[idx], anch[idx], weights=losses.RPN_BOX_WEIGHTS))
        scores.append(top)
        lvl.append(jnp.full((k,), i, jnp.int32))
    boxes = jnp.concatenate(boxes)
    scores = jnp.concatenate(scores)
    lvl = jnp.concatenate(lvl)
    finite = jnp.isfinite(boxes).all(-1) & jnp.isfinite(scores)
    # Reference: detectron2 raises FloatingPointError on non-finite training proposals; under
    # jit they are dropped (as at test time) and the step's finite-loss check catches divergence.
    boxes = jnp.where(finite[:, None], boxes, 0)
    scores = jnp.where(finite, scores, -jnp.inf)
    boxes = ops.clip_boxes(boxes, image_size[0], image_size[1])
    nonempty = ((boxes[:, 2] - boxes[:, 0]) > min_box_size) & (
        (boxes[:, 3] - boxes[:, 1]) > min_box_size
    )
    keep, _ = ops.batched_nms(
        boxes,
        scores,
        lvl,
        iou_threshold=nms_thresh,
        max_outputs=post_nms_topk,
        mask=finite & nonempty,
    )
    valid = keep >= 0
    safe = jnp.maximum(keep, 0)
    out_boxes = jnp.where(valid[:, None], boxes[safe], 0)
    out_scores = jnp.where(valid, scores[safe], -jnp.inf)
    return out_boxes, out_scores, valid


def find_top_proposals(
    logits: Sequence[jax.Array],
    deltas: Sequence[jax.Array],
    anchors: Sequence[Any],
    image_sizes: jax.Array,
    *,
    pre_nms_topk: int,
    post_nms_topk: int,
    nms_thresh: float = NMS_THRESH,
    min_box_size: float = 0.0,
) -> dict[str, jax.Array]:
    """Batched proposals from the RPN outputs (see the module docstring).

    Args:
      logits: per level (B, N_l); deltas: per level (B, N_l, 4); anchors: per level (N_l, 4).
      image_sizes: (B, 2) valid (height, width) of each padded image.
      pre_nms_topk: per level; post_nms_topk: per image (the static proposal count P).

    Returns:
      {"boxes" (B, P, 4), "logits" (B, P) (-inf in padding), "valid" (B, P) bool}, in
      descending objectness order, without gradient.
    """
    logits = [jax.lax.stop_gradient(x) for x in logits]
    deltas = [jax.lax.stop_gradient(x) for x in deltas]
    anchors = [jnp.asarray(a, deltas[0].dtype) for a in anchors]
    fn = lambda lg, dl, size: _top_proposals_one(  # noqa: E731
        lg,
        dl,
        anchors,
        size,
        pre_nms_topk=pre_nms_topk,
        post_nms_topk=post_nms_topk,
        nms_thresh=nms_thresh,
        min_box_size=min_box_size,
    )
    boxes, scores, valid = jax.vmap(fn)(logits, deltas, jnp.asarray(image_sizes))
    return {"boxes": boxes, "logits": scores, "valid": valid}


def rpn_losses(
    key: jax.Array,
    logits: Sequence[jax.Array],
    deltas: Sequence[jax.Array],
    anchors: Sequence[Any],
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    *,
    batch_size_per_image: int = BATCH_SIZE_PER_IMAGE,
    positive_fraction: float = POSITIVE_FRACTION,
    axis_name: str | None = None,
) -> dict[str, jax.Array]:
    """detectron2's RPN training losses: per-image anchor targets, then `losses.rpn_losses`.

    Args:
      key: the step's RPN key; each image draws from `matching.image_keys(key, B, axis_name)`
        (its global index), so a sharded batch samples as one device.
      logits, deltas, anchors: as `find_top_proposals`.
      gt_boxes: (B, G, 4); gt_valid: (B, G) bool.

    Returns:
      {"loss_rpn_cls", "loss_rpn_loc"} (this shard's share; pmean over the data axis).
    """
    all_anchors = jnp.asarray(np.concatenate([np.asarray(a) for a in anchors]), jnp.float32)
    b = gt_boxes.shape[0]
    keys = matching.image_keys(key, b, axis_name=axis_name)
    target = lambda k, g, v: matching.rpn_targets(  # noqa: E731
        k,
        all_anchors,
        g,
        v,
        batch_size_per_image=batch_size_per_image,
        positive_fraction=positive_fraction,
    )
    labels, matched = jax.vmap(target)(keys, gt_boxes.astype(jnp.float32), gt_valid)
    return losses.rpn_losses(
        jnp.concatenate(logits, axis=1),
        jnp.concatenate(deltas, axis=1),
        all_anchors,
        labels,
        matched,
        batch_size_per_image=batch_size_per_image,
        axis_name=axis_name,
    )
