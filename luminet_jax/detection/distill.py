"""Distillation on the RoI head's class logits (Table 4; mdistiller's `detection/` scheme).

The frozen teacher detector runs its backbone, FPN, RoIAlign, box head and predictor on the
STUDENT's sampled RoIs (ground truth appended); its RPN is never run and its logits are
constants. The same `distillers` objects as classification (KD, DKD, LumiNet, ...) get the
flattened student and teacher logits (R, K + 1) of every sampled RoI, the RoI labels
(background = K, last) and `mask` = the RoIs' validity, so padded RoIs count nowhere
(LumiNet's per-class statistics are over the valid RoIs of the global batch). Build the
distiller with `ce_weight=0`: the RoI head's cross-entropy is already the detector's loss.
Its total is added to the detector's four losses; its parts are logged as "distill/<part>".

A teacher trained with another pixel normalization than the student's (detectron2's MSRA
R-101: BGR, std 1; a torchvision R-18 student: RGB, ImageNet std) gets its own input:
`pixel_converter` maps the student's normalized batch images to the teacher's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from luminet_jax.detection import rcnn, steps

# (mean, std, bgr): mean and std per channel in RGB order, 0..255 pixels; bgr: channels BGR.
Normalization = tuple[tuple[float, ...], tuple[float, ...], bool]


def pixel_converter(src: Normalization, dst: Normalization) -> Callable | None:
    """`convert(images, image_size)`: images normalized as `src` -> as `dst`; None if equal.

    As `detection.data`: images are (pixel - mean) / std in the model's channel order and zero
    outside each image's valid (h, w) = `image_size`; the converted images are zero there too.
    Reference: mdistiller subtracts the teacher's BGR-ordered mean from the RGB image before
    swapping its channels; here each model gets exactly the normalization its weights expect.
    """

    def ordered(norm):
        mean, std, bgr = np.float32(norm[0]), np.float32(norm[1]), bool(norm[2])
        return (mean[::-1], std[::-1], bgr) if bgr else (mean, std, bgr)

    (mean_s, std_s, bgr_s), (mean_t, std_t, bgr_t) = ordered(src), ordered(dst)
    if bgr_s == bgr_t and np.array_equal(mean_s, mean_t) and np.array_equal(std_s, std_t):
        return None

    def convert(images: jax.Array, image_size: jax.Array) -> jax.Array:
        pixels = images.astype(jnp.float32) * std_s + mean_s
        if bgr_s != bgr_t:
            pixels = pixels[..., ::-1]
        out = (pixels - mean_t) / std_t
        rows = jnp.arange(images.shape[1])[None, :, None] < image_size[:, 0, None, None]
        cols = jnp.arange(images.shape[2])[None, None, :] < image_size[:, 1, None, None]
        return jnp.where((rows & cols)[..., None], out, 0.0).astype(images.dtype)

    return convert


def roi_distill_loss(
    teacher: rcnn.FasterRCNN,
    distiller: Any,
    aux: dict[str, jax.Array],
    images: jax.Array,
    teacher_variables: Any,
    *,
    epoch: jax.Array | int,
    axis_name: str | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The distiller's loss on the sampled RoIs of `aux` (`rcnn.train_forward`'s).

    Args:
      teacher: the teacher detector (same classes as the student).
      distiller: a logit distiller (`distillers.get_distiller`), called with `mask`.
      aux: the student's "class_logits" (B, S, K + 1), "rois" (B, S, 4), "roi_classes" and
        "roi_valid" (B, S).
      images: (B, H, W, 3), this shard's batch images.
      teacher_variables: the teacher's {"params", "frozen"} (no RPN parameters needed).
      epoch: 1-based epoch for warmup ramps.
      axis_name: the data axis under shard_map (the distiller's means are then global).

    Returns:
      (total, {"distill/<part>": value}), global-batch values.
    """
    s_logits = aux["class_logits"]
    rois = jax.lax.stop_gradient(aux["rois"])
    t_logits = rcnn.roi_class_logits(teacher, teacher_variables, images, rois)
    k1 = s_logits.shape[-1]
    out = distiller(
        s_logits.reshape(-1, k1),
        t_logits.reshape(-1, k1),
        aux["roi_classes"].reshape(-1),
        epoch=epoch,
        axis_name=axis_name,
        mask=aux["roi_valid"].reshape(-1),
    )
    return out.total, {f"distill/{k}": v for k, v in out.parts.items()}


def make_train_step(
    model: rcnn.FasterRCNN,
    teacher: rcnn.FasterRCNN,
    distiller: Any,
    tx: optax.GradientTransformation,
    *,
    steps_per_epoch: int,
    axis_name: str | None = None,
    lr_fn: Callable[[jax.Array], jax.Array] | None = None,
    seed: int = 0,
    teacher_input: Callable | None = None,
) -> Callable:
    """`train_step(state, teacher_variables, batch) -> (state, metrics)` with RoI distillation.

    The detection step of `detection.steps` plus `roi_distill_loss`; the teacher's variables
    come in as an argument (replicated, never in the state). A distiller without a teacher
    (vanilla) gives the plain detection step. `teacher_input` (`pixel_converter`'s) maps the
    batch images to the teacher's normalization.
    """
    if not distiller.uses_teacher:
        return steps.make_train_step(model, tx, axis_name=axis_name, lr_fn=lr_fn, seed=seed)
    if teacher is None:
        raise ValueError(f"{type(distiller).__name__} distills from a teacher; none was given.")
    if teacher.num_classes != model.num_classes:
        raise ValueError(
            f"Teacher has {teacher.num_classes} classes, the student {model.num_classes}."
        )

    def extra_loss(aux, batch, teacher_variables, step):
        epoch = step // steps_per_epoch + 1
        images = batch["image"]
        if teacher_input is not None:
            images = teacher_input(images, batch["image_size"])
        return roi_distill_loss(
            teacher,
            distiller,
            aux,
            images,
            teacher_variables,
            epoch=epoch,
            axis_name=axis_name,
        )

    return steps.make_train_step(
        model, tx, axis_name=axis_name, lr_fn=lr_fn, seed=seed, extra_loss=extra_loss
    )
