"""Faster R-CNN with FPN (detectron2's GeneralizedRCNN, box branch), and its pure functions.

    model = rcnn.get_detector("faster_rcnn_r18_fpn", num_classes=80)
    variables = model.init(key, images, train=False)          # {"params", "frozen"}
    out = model.apply(variables, images, train=False)         # detections (B, 100, ...)
    losses, aux = rcnn.train_forward(model, variables, batch, key, axis_name=None)
    t_logits = rcnn.roi_class_logits(teacher, t_vars, batch["image"], aux["rois"])
    dets = rcnn.predict(model, variables, batch)

Variables: "params" (trainable: res3..res5 convs, FPN, RPN head, box head and predictor) and
"frozen" (all FrozenBatchNorm buffers and the stem / res2 kernels; `backbone`), which the
step passes as a constant and never updates. Module names follow detectron2 (`backbone`
with `bottom_up` and `fpn_*`, `proposal_generator/rpn_head`, `roi_heads/box_head`,
`roi_heads/box_predictor`), so `detection.convert` maps checkpoints mechanically.

Randomness: the RPN and RoI samplers draw from `fold_in(key, 0)` and `fold_in(key, 1)`, then
per image from `matching.image_keys` (the global image index), so 8 shards equal 1 device.
Images are normalized and padded (sides multiples of 32); boxes are in padded-image pixels.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from luminet_jax.detection import anchors as anchors_lib
from luminet_jax.detection import backbone as backbone_lib
from luminet_jax.detection import fpn as fpn_lib
from luminet_jax.detection import roi_heads, rpn

LOSS_KEYS = ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg")


class FasterRCNN(nn.Module):
    """Faster R-CNN + FPN; every size below is static (a field), detectron2's defaults.

    Attributes:
      num_classes: K foreground classes (background is index K).
      depth, stem_channels, res2_channels, stride_in_1x1, freeze_at: the ResNet
        (`backbone.ResNet`).
      fpn_channels: FPN width (256).
      fc_dim, num_fc: the box head (2 x 1024).
      rpn_pre_nms_topk_train / _test: per level (2000 / 1000); rpn_post_nms_topk_train /
        _test: per image (1000 / 1000); rpn_nms_thresh 0.7; rpn_batch_size_per_image 256,
        rpn_positive_fraction 0.5.
      roi_batch_size_per_image 512, roi_positive_fraction 0.25: the RoI sampler.
      score_thresh 0.05, nms_thresh 0.5, detections_per_image 100: inference.
      dtype: compute dtype of the convs and FCs (variables stay float32; heads' outputs and
        losses are float32).
    """

    num_classes: int = 80
    depth: int = 50
    stem_channels: int = 64
    res2_channels: int = 0
    stride_in_1x1: bool = True
    freeze_at: int = 2
    fpn_channels: int = 256
    fc_dim: int = 1024
    num_fc: int = 2
    rpn_pre_nms_topk_train: int = rpn.PRE_NMS_TOPK_TRAIN
    rpn_pre_nms_topk_test: int = rpn.PRE_NMS_TOPK_TEST
    rpn_post_nms_topk_train: int = rpn.POST_NMS_TOPK_TRAIN
    rpn_post_nms_topk_test: int = rpn.POST_NMS_TOPK_TEST
    rpn_nms_thresh: float = rpn.NMS_THRESH
    rpn_batch_size_per_image: int = rpn.BATCH_SIZE_PER_IMAGE
    rpn_positive_fraction: float = rpn.POSITIVE_FRACTION
    roi_batch_size_per_image: int = roi_heads.BATCH_SIZE_PER_IMAGE
    roi_positive_fraction: float = roi_heads.POSITIVE_FRACTION
    score_thresh: float = roi_heads.SCORE_THRESH
    nms_thresh: float = roi_heads.NMS_THRESH
    detections_per_image: int = roi_heads.DETECTIONS_PER_IMAGE
    dtype: Any = None

    def setup(self):
        bottom_up = backbone_lib.ResNet(
            depth=self.depth,
            stem_channels=self.stem_channels,
            res2_channels=self.res2_channels,
            stride_in_1x1=self.stride_in_1x1,
            freeze_at=self.freeze_at,
            dtype=self.dtype,
        )
        self.backbone = fpn_lib.FPN(
            bottom_up=bottom_up, out_channels=self.fpn_channels, dtype=self.dtype
        )
        self.proposal_generator = rpn.ProposalGenerator(
            num_anchors=anchors_lib.num_cell_anchors(), dtype=self.dtype
        )
        self.roi_heads = roi_heads.ROIHeads(
            num_classes=self.num_classes, fc_dim=self.fc_dim, num_fc=self.num_fc, dtype=self.dtype
        )

    def features(self, images: jax.Array) -> list[jax.Array]:
        """Backbone + FPN: [p2, ..., p6]."""
        return self.backbone(images)

    def rpn_outputs(self, features):
        """The RPN head on p2..p6: (logits per level (B, N_l), deltas per level (B, N_l, 4))."""
        return self.proposal_generator(features)

    def box_outputs(self, features, rois: jax.Array):
        """RoI box head + predictor on p2..p5 and rois (B, R, 4): ((B, R, K+1), (B, R, 4K))."""
        return self.roi_heads(features, rois)

    def proposals(self, features, image_sizes, *, train: bool):
        logits, deltas = self.rpn_outputs(features)
        props = rpn.find_top_proposals(
            logits,
            deltas,
            rpn.level_anchors(features),
            image_sizes,
            pre_nms_topk=self.rpn_pre_nms_topk_train if train else self.rpn_pre_nms_topk_test,
            post_nms_topk=self.rpn_post_nms_topk_train if train else self.rpn_post_nms_topk_test,
            nms_thresh=self.rpn_nms_thresh,
        )
        return props, logits, deltas

    def initialize(self, images: jax.Array):
        """Creates every variable cheaply (no proposals, no NMS): for `init_variables`."""
        features = self.features(images)
        self.rpn_outputs(features)
        rois = jnp.tile(jnp.asarray([[0.0, 0.0, 32.0, 32.0]]), (images.shape[0], 1, 1))
        return self.box_outputs(features, rois)

    def __call__(self, images: jax.Array, *, train: bool = False, image_sizes=None):
        """Inference on (B, H, W, 3) images: detections (`roi_heads.detections`).

        With `train`, the RPN uses the training top-k (no sampling: use `train_forward` for
        losses). `image_sizes` (B, 2) defaults to the full padded size.
        """
        if image_sizes is None:
            image_sizes = jnp.tile(jnp.asarray(images.shape[1:3], jnp.int32), (images.shape[0], 1))
        features = self.features(images)
        props, _, _ = self.proposals(features, image_sizes, train=train)
        class_logits, box_deltas = self.box_outputs(features, props["boxes"])
        return roi_heads.detections(
            class_logits,
            box_deltas,
            props,
            image_sizes,
            score_thresh=self.score_thresh,
            nms_thresh=self.nms_thresh,
            detections_per_image=self.detections_per_image,
        )

    def forward_train(self, batch: dict[str, jax.Array], key: jax.Array, axis_name=None):
        """Training losses and aux on one (shard of a) batch; see `train_forward`."""
        features = self.features(batch["image"])
        props, logits, deltas = self.proposals(features, batch["image_size"], train=True)
        gt_valid = batch["gt_mask"].astype(bool)
        out = rpn.rpn_losses(
            jax.random.fold_in(key, 0),
            logits,
            deltas,
            rpn.level_anchors(features),
            batch["boxes"],
            gt_valid,
            batch_size_per_image=self.rpn_batch_size_per_image,
            positive_fraction=self.rpn_positive_fraction,
            axis_name=axis_name,
        )
        rois = roi_heads.sample_rois(
            jax.random.fold_in(key, 1),
            props,
            batch["boxes"],
            batch["classes"],
            gt_valid,
            num_classes=self.num_classes,
            batch_size_per_image=self.roi_batch_size_per_image,
            positive_fraction=self.roi_positive_fraction,
            axis_name=axis_name,
        )
        class_logits, box_deltas = self.box_outputs(features, rois["boxes"])
        out.update(
            roi_heads.box_losses(
                class_logits, box_deltas, rois, num_classes=self.num_classes, axis_name=axis_name
            )
        )
        aux = {
            "rois": rois["boxes"],
            "roi_valid": rois["valid"],
            "roi_classes": rois["classes"],
            "roi_foreground": rois["foreground"],
            "roi_gt_boxes": rois["gt_boxes"],
            "class_logits": class_logits,
            "box_deltas": box_deltas,
            "num_proposals": props["valid"].sum(axis=1),
        }
        return out, aux


def train_forward(
    model: FasterRCNN,
    variables: Any,
    batch: dict[str, jax.Array],
    key: jax.Array,
    *,
    axis_name: str | None = None,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """The training forward pass: (losses, aux).

    Args:
      model: the detector.
      variables: {"params", "frozen"}; differentiate w.r.t. "params".
      batch: {"image" (B, H, W, 3), "boxes" (B, G, 4), "classes" (B, G), "gt_mask" (B, G),
        "image_size" (B, 2), ...} (`detection.data`), B local to this shard.
      key: the step key (the same on every shard).
      axis_name: the data axis under shard_map, or None.

    Returns:
      losses: {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}, this shard's
        share: `lax.pmean` over the data axis gives the global-batch losses.
      aux: "rois" (B, S, 4) sampled RoIs (ground truth appended), "roi_valid" (B, S),
        "roi_classes" (B, S) labels in [0, K] (K background), "roi_foreground",
        "roi_gt_boxes", "class_logits" (B, S, K + 1) (the student's RoI class logits, with
        gradient), "box_deltas" (B, S, 4K), "num_proposals" (B,).
    """
    return model.apply(variables, batch, key, axis_name, method=FasterRCNN.forward_train)


def roi_class_logits(
    model: FasterRCNN, variables: Any, images: jax.Array, rois: jax.Array
) -> jax.Array:
    """The teacher path: backbone + FPN + RoI box head + predictor on given RoIs (no RPN).

    Returns the class logits (B, R, K + 1), float32, without gradient.
    """

    def fn(m, images, rois):
        return m.box_outputs(m.features(images), rois)[0]

    return jax.lax.stop_gradient(model.apply(variables, images, rois, method=fn))


def predict(model: FasterRCNN, variables: Any, batch: dict[str, jax.Array]) -> dict:
    """Inference on a batch (uses its "image_size"): `coco.evaluate`'s predict contract."""
    return model.apply(variables, batch["image"], train=False, image_sizes=batch["image_size"])


def total_loss(loss_dict: dict[str, jax.Array]) -> jax.Array:
    """The sum of the four detector losses (detectron2 weights them all 1)."""
    return sum(loss_dict[k] for k in LOSS_KEYS)


DETECTORS = {
    "faster_rcnn_r18_fpn": functools.partial(FasterRCNN, depth=18),
    "faster_rcnn_r50_fpn": functools.partial(FasterRCNN, depth=50),
    "faster_rcnn_r101_fpn": functools.partial(FasterRCNN, depth=101),
}


def get_detector(name: str, **kwargs) -> FasterRCNN:
    """A detector of `DETECTORS` with field overrides (num_classes=..., fc_dim=..., ...)."""
    if name not in DETECTORS:
        raise KeyError(f"Unknown detector {name!r}; known: {sorted(DETECTORS)}")
    return DETECTORS[name](**kwargs)


def init_variables(model: FasterRCNN, key: jax.Array | int, image_size=(64, 64)) -> Any:
    """The variables {"params", "frozen"} from one zero image of `image_size` (jitted init).

    `key` is a PRNG key, or an int seed, which is turned into an "rbg" key: XLA compiles the
    threefry bits of ~100 initializers very slowly on CPU (minutes under load), rbg's in
    seconds. The shapes do not depend on the image size (sides multiples of 32).
    """
    if isinstance(key, int):
        key = jax.random.key(key, impl="rbg")
    init = lambda k: model.init(  # noqa: E731
        k, jnp.zeros((1, *image_size, 3), jnp.float32), method=FasterRCNN.initialize
    )
    return jax.jit(init)(key)


def abstract_variables(model: FasterRCNN) -> Any:
    """The variables' shapes and dtypes (jax.ShapeDtypeStruct), without compute."""
    return jax.eval_shape(lambda: init_variables(model, 0))
