"""COCO box evaluation through pycocotools' own `COCOeval` (no rewrite of the metric).

`evaluate_coco(gt, detections)` takes the ground truth as a COCO-format dict (what
`detection.data` loads, or any `instances_*.json`) and one detection record per evaluated image,
with boxes x1y1x2y2 in original-image pixels and contiguous class indices 0..K-1 (the data
pipeline's labels: the dataset's category ids in sorted order, background K excluded). It returns
COCO's six box AP numbers in [0, 1] (COCO prints them as percentages; detectron2 logs x100):

    {"AP": AP@[.50:.95], "AP50", "AP75", "APs", "APm", "APl"}

As in COCOeval, an area range without any ground truth gives -1. When no evaluated image has a
detection, pycocotools' `loadRes` cannot run (it indexes the first result), and every value is 0.

`batch_detections` turns the detector's padded per-batch outputs (boxes in padded-image pixels)
into these records with the data batch's "scale", "image_size", "image_id" and "mask";
`evaluate(predict, variables, batches, gt)` runs a whole eval pass (as `luminet_jax.evaluation`).
"""

import contextlib
import copy
import io
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from absl import logging

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6], in this order.
DETECTION_KEYS = ("boxes", "scores", "classes", "valid")  # What `evaluate`'s predict returns.


def category_ids(gt: dict) -> list[int]:
    """The dataset's category ids in sorted order: class index k <-> `category_ids(gt)[k]`."""
    return sorted(int(c["id"]) for c in gt["categories"])


def _prepared_gt(gt: dict) -> dict:
    """A copy of `gt` with the fields COCOeval needs ("area", "iscrowd", "id") filled in."""
    gt = copy.copy(gt)
    annotations = []
    for i, ann in enumerate(gt.get("annotations", [])):
        ann = dict(ann)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
        ann.setdefault("id", i + 1)
        annotations.append(ann)
    gt["annotations"] = annotations
    return gt


def _valid_mask(det: dict, n: int) -> np.ndarray:
    if "valid" in det:
        return np.asarray(det["valid"], bool).reshape(n)
    count = int(det.get("count", n))
    return np.arange(n) < count


def to_results(gt: dict, detections: Sequence[dict]) -> list[dict]:
    """Detection records -> COCO result dicts (xywh boxes, the dataset's category ids).

    Args:
      gt: COCO-format ground truth dict (only its "categories" are read).
      detections: per image {"image_id": int, "boxes": (N, 4) x1y1x2y2 original pixels,
        "scores": (N,), "classes": (N,) contiguous indices}, plus either "valid" (N,) bool or
        "count" (the first `count` are valid); without either all N are valid.

    Returns:
      A list of {"image_id", "category_id", "bbox": [x, y, w, h], "score"}.
    """
    cat_ids = np.asarray(category_ids(gt), np.int64)
    results = []
    for det in detections:
        boxes = np.asarray(det["boxes"], np.float64).reshape(-1, 4)
        scores = np.asarray(det["scores"], np.float64).reshape(-1)
        classes = np.asarray(det["classes"], np.int64).reshape(-1)
        keep = _valid_mask(det, len(boxes))
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        if len(classes) and (classes.min() < 0 or classes.max() >= len(cat_ids)):
            raise ValueError(
                f"image {det['image_id']}: class indices must lie in [0, {len(cat_ids)}), got "
                f"[{classes.min()}, {classes.max()}] (background is not a detection)"
            )
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        for box, score, cls in zip(xywh.tolist(), scores.tolist(), classes.tolist()):
            results.append(
                {
                    "image_id": int(det["image_id"]),
                    "category_id": int(cat_ids[cls]),
                    "bbox": box,
                    "score": score,
                }
            )
    return results


def evaluate_coco(gt: dict, detections: Sequence[dict], *, verbose: bool = False) -> dict:
    """COCO box AP of `detections` against `gt`, by pycocotools' COCOeval ("bbox").

    The evaluated images are those with a record in `detections` (an image with no valid
    detection still counts: its ground truth is missed); pass one record per image of the
    evaluated split. Records with an image id absent from `gt` raise a ValueError.

    Args:
      gt: COCO-format ground truth dict ("images", "annotations", "categories").
      detections: per-image records, see `to_results`.
      verbose: log pycocotools' summary table (its prints are captured either way).

    Returns:
      {"AP", "AP50", "AP75", "APs", "APm", "APl"} as floats in [0, 1] (-1 where an area range
      has no ground truth); all 0.0 when there is no detection at all.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    image_ids = sorted({int(d["image_id"]) for d in detections})
    known = {int(img["id"]) for img in gt["images"]}
    unknown = sorted(set(image_ids) - known)
    if unknown:
        raise ValueError(f"detections for image ids not in the ground truth: {unknown[:10]}")
    results = to_results(gt, detections)
    if not results:
        if verbose:
            logging.info("COCO bbox: no detections on %d images; all metrics 0", len(image_ids))
        return dict.fromkeys(METRICS, 0.0)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        coco_gt = COCO()
        coco_gt.dataset = _prepared_gt(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            evaluator.summarize()
    if verbose:
        logging.info("COCO bbox on %d images:\n%s", len(image_ids), summary.getvalue())
    return {name: float(value) for name, value in zip(METRICS, evaluator.stats[:6])}


def batch_detections(
    batch: dict[str, np.ndarray],
    boxes: Any,
    scores: Any,
    classes: Any,
    valid: Any,
) -> list[dict]:
    """One batch of detector outputs -> per-image records for `evaluate_coco`.

    Boxes are clipped to the image's valid region (`batch["image_size"]`, in padded-image
    pixels), then divided by `batch["scale"]` into original-image pixels. Padding images
    (`batch["mask"]` == 0, eval batches only) are dropped.

    Args:
      batch: a data batch with "image_id" (B,), "scale" (B,), "image_size" (B, 2) valid
        (height, width), optionally "mask" (B,).
      boxes: (B, D, 4) x1y1x2y2 in padded-image pixels.
      scores: (B, D).
      classes: (B, D) contiguous class indices.
      valid: (B, D) bool, or (B,) counts of valid leading detections.

    Returns:
      A list of records {"image_id", "boxes", "scores", "classes", "valid"}.
    """
    boxes = np.asarray(boxes, np.float64)
    scores, classes, valid = map(np.asarray, (scores, classes, valid))
    if valid.ndim == 1:
        valid = np.arange(boxes.shape[1])[None, :] < valid[:, None]
    mask = np.asarray(batch.get("mask", np.ones(len(boxes))))
    records = []
    for i in np.flatnonzero(mask > 0):
        height, width = np.asarray(batch["image_size"][i], np.float64)
        limits = np.array([width, height, width, height])
        clipped = np.clip(boxes[i], 0.0, limits) / float(batch["scale"][i])
        records.append(
            {
                "image_id": int(batch["image_id"][i]),
                "boxes": clipped,
                "scores": scores[i],
                "classes": classes[i],
                "valid": valid[i].astype(bool),
            }
        )
    return records


def _host(tree):
    """Device (global) arrays -> numpy on this host; gathered over processes when several."""
    import jax

    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def evaluate(
    predict: Callable[[Any, Any], dict],
    variables: Any,
    batches: Iterable[dict],
    gt: dict,
    *,
    verbose: bool = False,
) -> dict:
    """Runs a detector over eval batches and scores all its detections with `evaluate_coco`.

    Outputs stay on the device until the pass ends (one transfer, no per-batch sync). With
    several processes every process gathers every batch and computes the same metrics.

    Args:
      predict: `predict(variables, batch) -> {"boxes" (B, D, 4) x1y1x2y2 padded-image pixels,
        "scores" (B, D), "classes" (B, D), "valid" (B, D) bool or (B,) counts}` (jitted or
        sharded; inference after score threshold and per-class NMS).
      variables: what `predict` takes.
      batches: eval batches of `detection.data.make_eval_iter` (numpy or global arrays) with
        "image_id", "scale", "image_size" and "mask".
      gt: the eval split's COCO-format ground truth (`split.gt()`).
      verbose: log COCO's summary table.

    Returns:
      `evaluate_coco`'s {"AP", "AP50", "AP75", "APs", "APm", "APl"}.
    """
    keys = ("image_id", "scale", "image_size", "mask")
    collected = []
    for batch in batches:
        out = predict(variables, batch)
        collected.append(({k: batch[k] for k in keys}, {k: out[k] for k in DETECTION_KEYS}))
    records = []
    for meta, out in _host(collected):
        records += batch_detections(meta, *(out[k] for k in DETECTION_KEYS))
    return evaluate_coco(gt, records, verbose=verbose)
