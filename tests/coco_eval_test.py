"""COCO evaluation (luminet_jax.detection.coco) through pycocotools' COCOeval."""

import numpy as np
import pytest

from luminet_jax.detection import coco

CAT_IDS = (3, 7, 11)  # Non-contiguous, as COCO's: class index k <-> CAT_IDS[k].


def _gt():
    """Three images; boxes of all three COCO area ranges (small < 32^2 < medium < 96^2)."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id in (10, 20, 30):
        images.append({"id": image_id, "height": 240, "width": 320, "file_name": f"{image_id}.jpg"})
        for side in (20, 50, 120):  # One box per area range.
            x, y = rng.uniform(0, 320 - side), rng.uniform(0, 240 - side)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.choice(CAT_IDS)),
                    "bbox": [x, y, side, side * 0.9],
                    "area": side * side * 0.9,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c, "name": f"c{c}"} for c in CAT_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}


def _perfect(gt, class_shift=0):
    records = []
    for img in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
        xywh = np.array([a["bbox"] for a in anns])
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        classes = np.array([CAT_IDS.index(a["category_id"]) for a in anns])
        records.append(
            {
                "image_id": img["id"],
                "boxes": boxes,
                "scores": np.linspace(0.9, 0.5, len(anns)),
                "classes": (classes + class_shift) % len(CAT_IDS),
            }
        )
    return records


def test_perfect_detections_give_ap_one(capsys):
    gt = _gt()
    metrics = coco.evaluate_coco(gt, _perfect(gt))
    assert set(metrics) == set(coco.METRICS)
    for name in coco.METRICS:
        assert metrics[name] == pytest.approx(1.0, abs=1e-12), name
    assert capsys.readouterr().out == ""  # pycocotools' prints are captured.


def test_padded_invalid_detections_are_ignored():
    gt = _gt()
    records = _perfect(gt)
    for rec in records:  # Append high-scoring junk behind a count, as the detector pads.
        n = len(rec["boxes"])
        rec["boxes"] = np.concatenate([rec["boxes"], np.tile([[0.0, 0.0, 5.0, 5.0]], (4, 1))])
        rec["scores"] = np.concatenate([rec["scores"], np.ones(4)])
        rec["classes"] = np.concatenate([rec["classes"], np.zeros(4, int)])
        rec["count"] = n
    assert coco.evaluate_coco(gt, records)["AP"] == pytest.approx(1.0, abs=1e-12)


def test_shuffled_labels_give_ap_zero():
    gt = _gt()
    metrics = coco.evaluate_coco(gt, _perfect(gt, class_shift=1))  # Every label wrong.
    for name in ("AP", "AP50", "AP75"):
        assert metrics[name] == pytest.approx(0.0, abs=1e-12), name


def test_empty_detections_give_zero_without_error():
    gt = _gt()
    empty = [
        {"image_id": img["id"], "boxes": np.zeros((5, 4)), "scores": np.zeros(5),
         "classes": np.zeros(5, int), "valid": np.zeros(5, bool)}
        for img in gt["images"]
    ]  # fmt: skip
    assert coco.evaluate_coco(gt, empty, verbose=True) == dict.fromkeys(coco.METRICS, 0.0)
    assert coco.evaluate_coco(gt, []) == dict.fromkeys(coco.METRICS, 0.0)


def test_one_missed_box_gives_cocoeval_value():
    # Two ground-truth boxes of one class, one found exactly: recall 1/2 at precision 1. COCO's
    # 101-point interpolated precision is 1 at recall 0.00..0.50 (51 points), 0 above it.
    gt = {
        "images": [{"id": 1, "height": 200, "width": 200}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 60, 60]},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [100, 100, 80, 50]},
        ],  # No "area"/"iscrowd": filled in as w*h and 0.
        "categories": [{"id": 3, "name": "a"}],
    }
    det = {"image_id": 1, "boxes": [[10, 10, 70, 70]], "scores": [0.8], "classes": [0]}
    metrics = coco.evaluate_coco(gt, [det])
    assert 0.0 < metrics["AP"] < 1.0
    for name in ("AP", "AP50", "AP75", "APm"):
        assert metrics[name] == pytest.approx(51 / 101, rel=1e-12), name
    assert metrics["APs"] == -1.0  # No small ground truth: COCOeval's -1.
    assert metrics["APl"] == -1.0


def test_errors_name_the_problem():
    gt = _gt()
    record = {"image_id": 999, "boxes": [[0, 0, 1, 1]], "scores": [1.0], "classes": [0]}
    with pytest.raises(ValueError, match="999"):
        coco.evaluate_coco(gt, [record])
    record = {"image_id": 10, "boxes": [[0, 0, 1, 1]], "scores": [1.0], "classes": [3]}
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        coco.evaluate_coco(gt, [record])


def test_batch_detections_maps_to_original_pixels():
    batch = {
        "image_id": np.array([10, 20, 0]),
        "scale": np.array([2.0, 0.5, 1.0]),
        "image_size": np.array([[100, 150], [60, 40], [0, 0]]),
        "mask": np.array([1, 1, 0]),
    }
    boxes = np.array(
        [[[10, 20, 30, 40], [140, 90, 170, 130]], [[4, 6, 8, 10], [0, 0, 1, 1]], [[0] * 4] * 2],
        np.float32,
    )
    scores = np.ones((3, 2))
    classes = np.zeros((3, 2), int)
    records = coco.batch_detections(batch, boxes, scores, classes, np.array([2, 1, 0]))
    assert [r["image_id"] for r in records] == [10, 20]  # The padding image is dropped.
    np.testing.assert_array_equal(records[0]["boxes"], [[5, 10, 15, 20], [70, 45, 75, 50]])
    np.testing.assert_array_equal(records[1]["boxes"][0], [8, 12, 16, 20])
    np.testing.assert_array_equal(records[1]["valid"], [True, False])


def test_evaluate_runs_a_sharded_predictor_over_eval_batches():
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from luminet_jax.detection import data

    split = data.get_source("tiny_boxes_sample").split("val")
    gt = split.gt()
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    kw = dict(global_batch=8, pad_size=(128, 128), max_gt=4, short_side=96, max_size=128,
              process_index=0, process_count=1)  # fmt: skip
    batches = list(data.make_eval_iter(split, **kw))

    @jax.jit
    def predict(missed, batch):  # The ground truth as detections, the last `missed` dropped.
        return {
            "boxes": batch["boxes"],
            "scores": jnp.where(batch["gt_mask"], 0.9, 0.0),
            "classes": batch["classes"],
            "valid": jnp.sum(batch["gt_mask"], axis=1) - missed,
        }

    on_devices = [jax.device_put(b, sharding) for b in batches]
    assert coco.evaluate(predict, 0, on_devices, gt)["AP"] == pytest.approx(1.0, abs=1e-12)
    metrics = coco.evaluate(predict, 1, on_devices, gt)
    records = []  # The same detections through the host path.
    for b in batches:
        counts = b["gt_mask"].sum(1) - 1
        scores = np.where(b["gt_mask"], 0.9, 0.0)
        records += coco.batch_detections(b, b["boxes"], scores, b["classes"], counts)
    assert 0.0 < metrics["AP"] < 1.0
    assert metrics == coco.evaluate_coco(gt, records)
