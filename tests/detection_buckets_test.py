"""Aspect-ratio buckets of the detection train batches (`detection.buckets`, `data`).

In-memory splits of landscape, portrait and square images: each batch is padded to one
bucket and holds only its images, the bucket of step k is the same on every process, the
batches are a pure function of (seed, process, step), and one pad size is the old shuffle.
The task's train step, jitted as the loop jits it, traces (compiles) once per bucket.
"""

import importlib
import json

import jax
import numpy as np
import pytest
from PIL import Image

from luminet_jax import sharding, tasks, train
from luminet_jax.detection import buckets, data, records

COCO_PADS = ((800, 1088), (800, 1344), (1088, 800), (1344, 800))
PADS = ((64, 96), (96, 64), (64, 64))  # landscape, portrait, square (at short side 48..64)
TRAIN = dict(seed=5, pad_size=(96, 96), max_gt=2, short_sides=(48, 64), max_size=96)


def mixed_split(counts=(20, 14, 6), empty=3) -> records.Split:
    """counts = (landscape 48 x 72, portrait 72 x 48, square 48 x 48) images, one box each,
    then `empty` landscape images without boxes (filtered out); pixel value = index % 251."""
    shapes = [(48, 72)] * counts[0] + [(72, 48)] * counts[1] + [(48, 48)] * counts[2]
    shapes += [(48, 72)] * empty
    n = sum(counts)
    order = [*np.random.default_rng(0).permutation(n).tolist(), *range(n, n + empty)]
    recs = []
    for i, k in enumerate(order):
        h, w = shapes[k]
        boxes = np.array([[2, 3, w - 4, h - 5]], np.float32)[: int(k < n)]
        recs.append(records.Record(i + 1, f"{i}.png", h, w, boxes, np.zeros(len(boxes), np.int32)))

    def example(i):
        r = recs[i]
        return r, np.full((r.height, r.width, 3), i % 251, np.uint8)

    return records.Split(len(recs), example, lambda: {}, recs)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _bucket(batch):
    pads = [tuple(p) for p in PADS]
    return pads.index(tuple(batch["image"].shape[1:3]))


def test_assign_buckets_coco_sizes_ties_and_errors():
    sizes = [(480, 640), (427, 640), (640, 480), (640, 427), (640, 640), (200, 1000), (375, 500)]
    got = buckets.assign_buckets(sizes, COCO_PADS, short_side=800, max_size=1333)
    # 4:3 -> 800 x 1067 (1088 wide); 3:2 -> 800 x 1199 (1344); squares 800 x 800 fit the two
    # smallest equally: the first listed; 1:5 -> 267 x 1333.
    assert got.tolist() == [0, 1, 2, 3, 0, 1, 0]
    with pytest.raises(ValueError, match=r"image 1 \(\[640, 480\] -> \[1067, 800\]\) fits none"):
        buckets.assign_buckets(
            [(480, 640), (640, 480)], COCO_PADS[:2], short_side=800, max_size=1333
        )


def test_assign_buckets_is_the_smallest_pad_holding_transforms_size():
    rng = np.random.default_rng(1)
    sizes = rng.integers(20, 700, (300, 2))
    pads = ((32, 64), (64, 32), (64, 64), (64, 96), (96, 64), (96, 96))
    got = buckets.assign_buckets(sizes, pads, short_side=64, max_size=96)
    area = [h * w for h, w in pads]
    for (h, w), b in zip(sizes, got):
        scale = data.resize_scale(int(h), int(w), 64, 96)
        new = (int(h * scale + 0.5), int(w * scale + 0.5))  # data.transform's rounding
        fits = [k for k, p in enumerate(pads) if new[0] <= p[0] and new[1] <= p[1]]
        assert b == min(fits, key=lambda k: (area[k], k))


def test_each_batch_is_one_bucket_and_each_epoch_uses_images_once():
    split = mixed_split()
    spe = data.train_steps_per_epoch(
        split, global_batch=4, pad_sizes=PADS, short_sides=(48, 64), max_size=96
    )
    assert spe == 20 // 4 + 14 // 4 + 6 // 4  # 5 + 3 + 1: each bucket's whole batches
    it = data.make_train_iter(split, global_batch=4, **TRAIN, pad_sizes=PADS,
                              process_index=0, process_count=1)  # fmt: skip
    batches = _take(it, 3 * spe)
    for epoch in range(3):
        chunk = batches[epoch * spe : (epoch + 1) * spe]
        assert sorted(_bucket(b) for b in chunk) == [0] * 5 + [1] * 3 + [2]
        ids = np.concatenate([b["image_id"] for b in chunk])
        assert len(set(ids.tolist())) == len(ids)  # each image at most once per epoch
        for b in chunk:
            pad = PADS[_bucket(b)]
            sizes = b["image_size"]
            assert (sizes[:, 0] <= pad[0]).all() and (sizes[:, 1] <= pad[1]).all()
            hw = [(split.records[i].height, split.records[i].width) for i in b["index"]]
            assert len({np.sign(h - w) for h, w in hw}) == 1  # one aspect group per batch
            for img, (hh, ww), i in zip(b["image"], sizes, b["index"]):
                np.testing.assert_array_equal(img[hh:], 0.0)  # zero padding
                np.testing.assert_array_equal(img[:, ww:], 0.0)
                assert img[0, 0, 0] == pytest.approx(
                    (i % 251 - data.PIXEL_MEAN[0]) / data.PIXEL_STD[0]
                )
    orders = [[_bucket(b) for b in batches[e * spe : (e + 1) * spe]] for e in range(3)]
    assert len({tuple(o) for o in orders}) > 1  # the schedule is redrawn every epoch
    resumed = _take(data.make_train_iter(split, global_batch=4, **TRAIN, pad_sizes=PADS,
                                         start_step=spe - 2, process_index=0, process_count=1),
                    4)  # fmt: skip
    for a, b in zip(batches[spe - 2 :], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("processes", [2, 3])
def test_processes_pad_each_step_alike_and_read_disjoint_images(processes):
    split = mixed_split(counts=(26, 17, 9))
    kw = dict(global_batch=2 * processes, **TRAIN, pad_sizes=PADS)
    spe = data.train_steps_per_epoch(
        split, global_batch=2 * processes, process_count=processes, pad_sizes=PADS,
        short_sides=(48, 64), max_size=96,
    )  # fmt: skip
    per_process = [
        _take(data.make_train_iter(split, **kw, process_index=p, process_count=processes), 2 * spe)
        for p in range(processes)
    ]
    for step in range(2 * spe):
        assert len({b[step]["image"].shape for b in per_process}) == 1  # same pad on each
    for epoch in range(2):
        ids = np.concatenate(
            [
                b["image_id"]
                for batches in per_process
                for b in batches[epoch * spe : (epoch + 1) * spe]
            ]
        )
        assert len(set(ids.tolist())) == len(ids) == spe * 2 * processes


def test_one_pad_size_is_the_plain_shuffle():
    split = mixed_split()
    kw = dict(global_batch=4, **{**TRAIN, "pad_size": (96, 96)}, process_index=0, process_count=1)
    plain = _take(data.make_train_iter(split, **kw), 12)
    listed = _take(data.make_train_iter(split, **kw, pad_sizes=[(96, 96)]), 12)
    assert data.train_steps_per_epoch(split, global_batch=4) == 40 // 4
    for a, b in zip(plain, listed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_bucket_with_too_few_images_is_skipped_with_a_warning(caplog):
    split = mixed_split(counts=(8, 8, 3))
    with caplog.at_level("WARNING"):
        it = data.make_train_iter(split, global_batch=4, **TRAIN, pad_sizes=PADS,
                                  process_index=0, process_count=1)  # fmt: skip
        batches = _take(it, 8)
    assert "[(64, 64)] get no steps" in caplog.text
    assert {_bucket(b) for b in batches} == {0, 1}


def test_split_without_records_reads_its_sizes():
    split = mixed_split(empty=0)
    sizes = buckets.image_sizes(split)
    bare = records.Split(split.size, split.example, split.gt, None, lambda: sizes)
    np.testing.assert_array_equal(buckets.image_sizes(bare), sizes)
    kw = dict(global_batch=4, **TRAIN, pad_sizes=PADS, process_index=0, process_count=1)
    for a, b in zip(_take(data.make_train_iter(split, **kw), 6),
                    _take(data.make_train_iter(bare, **kw), 6)):  # fmt: skip
        np.testing.assert_array_equal(a["image_id"], b["image_id"])
    with pytest.raises(ValueError, match="neither its records nor its image sizes"):
        buckets.image_sizes(records.Split(2, split.example, split.gt))


def _coco_dir(root, shapes, split):
    """A COCO-format split of solid images of `shapes` (h, w), one box each."""
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, anns = [], []
    for i, (h, w) in enumerate(shapes, start=1):
        Image.new("RGB", (w, h), (i * 7 % 256, 90, 30)).save(root / split / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "height": h, "width": w})
        box = [w / 4, h / 4, w / 2, h / 2]
        anns.append({"id": i, "image_id": i, "category_id": 1 + i % 3, "bbox": box, "iscrowd": 0})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}  # fmt: skip
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(gt))


def bucketed_smoke_config(tmp_path, steps=4):
    """configs/detection_smoke.py on 16 landscape + 16 portrait images (48 x 64 / 64 x 48,
    resized to 96 x 128 / 128 x 96) in two buckets: 2 steps of each per epoch at batch 8."""
    _coco_dir(tmp_path / "data", [(48, 64)] * 16 + [(64, 48)] * 16, "train")
    _coco_dir(tmp_path / "data", [(48, 64), (64, 48)] * 4, "val")
    config = importlib.import_module("configs.detection_smoke").get_config(f"steps={steps}")
    config.dataset.update(name=f"coco_dir:{tmp_path / 'data'}", pad_sizes=BUCKETS)
    return config


BUCKETS = ((96, 128), (128, 96))


def test_task_train_step_traces_once_per_bucket(tmp_path):
    # The loop jits the task's step (sharding.shard_train_step); jax.jit traces (and compiles)
    # once per input shape, so once per bucket. Lowering shares jit's trace cache: the count
    # is the loop's compile count without compiling here.
    config = bucketed_smoke_config(tmp_path)
    mesh = sharding.make_mesh()
    task = tasks.build(config, mesh=mesh)
    assert task.steps_per_epoch == 4
    shapes = []

    def counted(state, teacher_variables, batch):
        shapes.append(batch["image"].shape)
        return task.train_step(state, teacher_variables, batch)

    step = sharding.shard_train_step(counted, mesh, task.batch_spec)
    state = jax.eval_shape(task.init, 0, None)
    batches = task.train_batches(0, task.seed)
    seen = []
    for k in range(8):  # two epochs
        batch = batches(k)
        seen.append(batch["image"].shape[1:3])
        step.lower(state, task.teacher_variables, batch)
    assert sorted(set(seen)) == sorted(BUCKETS) and seen.count(BUCKETS[0]) == 4
    assert sorted(s[1:3] for s in shapes) == sorted(BUCKETS)  # one trace per bucket


@pytest.mark.integration
@pytest.mark.slow  # compiles the detector's train step twice and its predict step
def test_bucketed_run_compiles_once_per_bucket_in_the_loop(tmp_path, monkeypatch):
    jitted = []
    shard = sharding.shard_train_step

    def keep(*args, **kwargs):
        jitted.append(shard(*args, **kwargs))
        return jitted[-1]

    monkeypatch.setattr(train.sharding, "shard_train_step", keep)
    result = train.train_and_evaluate(bucketed_smoke_config(tmp_path, 6), str(tmp_path / "w"))
    assert result["steps"] == 6 and np.isfinite(result["last_AP"])
    (step,) = jitted
    assert step._cache_size() == len(BUCKETS)  # compiled once per bucket over 6 steps


def test_coco_pad_sizes_hold_every_aspect_ratio():
    ds = importlib.import_module("configs.coco_frcnn_r101_r18").get_config("luminet").dataset
    assert all(s % 32 == 0 for p in ds.pad_sizes for s in p)
    rng = np.random.default_rng(2)
    sizes = np.stack([rng.integers(50, 700, 2000), rng.integers(50, 700, 2000)], 1)
    got = buckets.assign_buckets(sizes, ds.pad_sizes, short_side=max(ds.short_sides),
                                 max_size=ds.max_size)  # fmt: skip
    assert set(got.tolist()) == {0, 1, 2, 3}
    # Each bucket is at most the old square pad (1344 x 1344): never more pixels.
    assert all(h * w < 1344 * 1344 for h, w in ds.pad_sizes)
