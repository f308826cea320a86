"""Detection data (luminet_jax.detection.sources / data / tiny_boxes) and the shipped sample."""

import io
import json
import logging
import tarfile
import types
import zipfile

import numpy as np
import pytest
from PIL import Image

from luminet_jax.detection import coco, data, sources, tiny_boxes

MINI = "tiny-imagenet-200-mini.tar.gz"
TRAIN = dict(
    global_batch=8,
    seed=3,
    pad_size=(160, 160),
    max_gt=6,
    short_sides=(96, 128, 144),
    max_size=160,
    process_index=0,
    process_count=1,
)


@pytest.fixture(scope="module")
def sample():
    return data.get_source("tiny_boxes_sample")


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_sample_layout(sample):
    assert sample.num_classes == 200
    assert sample.category_ids == tuple(range(1, 201))
    for name, count in (("train", 64), ("val", 32)):
        split = sample.split(name)
        assert split.size == count == len(split.gt()["images"])
        assert all(len(r.boxes) == 4 for r in split.records)
        record, image = split.example(0)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8


@pytest.fixture(scope="module")
def mini_files(shared_data):
    """The shared Tiny-ImageNet mini archive's text files and JPEGs, read in one pass."""
    with tarfile.open(shared_data / MINI) as tar:
        return {
            m.name.split("/", 1)[1]: tar.extractfile(m).read()
            for m in tar
            if m.isfile() and m.name.endswith((".txt", ".JPEG"))
        }


@pytest.mark.integration  # heavy: the second tier
def test_sample_boxes_are_source_boxes_shifted_by_tile_offset(sample, mini_files):
    files = mini_files  # Read independently of tiny_boxes: boxes and pixels.
    raw = {}
    for name, text in files.items():
        if name.endswith("_boxes.txt"):
            for line in text.decode().splitlines():
                file, *box = line.split("\t")
                raw[f"train/{name.split('/')[1]}/images/{file}"] = list(map(int, box))
    for line in files["val/val_annotations.txt"].decode().splitlines():
        file, _, *box = line.split("\t")
        raw[f"val/images/{file}"] = list(map(int, box))
    wnids = files["wnids.txt"].decode().split()
    for name in ("train", "val"):
        split = sample.split(name)
        images = {img["id"]: img for img in split.gt()["images"]}
        for index, record in enumerate(split.records):
            tiles = images[record.image_id]["tiles"]
            expected = []
            _, pixels = split.example(index)
            for k, tile in enumerate(tiles):
                ox, oy = 64 * (k % 2), 64 * (k // 2)
                assert tile["offset"] == [ox, oy]
                x0, y0, x1, y1 = raw[tile["file"]]
                expected.append([x0 + ox, y0 + oy, x1 + 1 + ox, y1 + 1 + oy])
                label = record.classes[k]
                if name == "train":
                    assert wnids[label] == tile["file"].split("/")[1]
                source = np.asarray(Image.open(io.BytesIO(files[tile["file"]])).convert("RGB"))
                diff = np.abs(pixels[oy : oy + 64, ox : ox + 64].astype(int) - source).mean()
                assert diff < 6.0, (tile["file"], diff)  # JPEG q85 re-encoding; measured < 3.
            np.testing.assert_array_equal(record.boxes, np.array(expected, np.float32))


def _fake_tiny_imagenet(root):
    """A tiny-imagenet-200 folder: 2 classes x 4 train images, 4 val images, solid colours."""
    wnids = ["n001", "n002"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    colours, val_lines = {}, []
    for c, wnid in enumerate(wnids):
        (root / "train" / wnid / "images").mkdir(parents=True)
        lines = []
        for k in range(4):
            colour = (60 * k + 30, 100 * c + 50, 200 - 40 * k)
            name = f"{wnid}_{k}.JPEG"
            Image.new("RGB", (64, 64), colour).save(root / "train" / wnid / "images" / name, "JPEG")
            colours[f"train/{wnid}/images/{name}"] = colour
            lines.append(f"{name}\t{k}\t{2 * k}\t{40 + k}\t{63 - k}")
            v = f"val_{2 * c + k % 2}.JPEG"
            if k < 2:
                Image.new("L", (64, 64), 40 * k + 100 * c).save(root / "val" / "images" / v, "JPEG")
                val_lines.append(f"{v}\t{wnid}\t{k}\t{k}\t{50 + k}\t{60}")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(lines) + "\n")
    (root / "val" / "val_annotations.txt").write_text("\n".join(val_lines) + "\n")
    return colours


def test_tiny_boxes_cli_tiles_boxes_and_pixels(tmp_path):
    colours = _fake_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    argv = ["--source", str(tmp_path), "--train", "2", "--val", "1", "--seed", "4"]
    tiny_boxes.main([*argv, "--out", str(tmp_path / "a")])
    source = data.get_source(f"coco_dir:{tmp_path / 'a'}")
    assert source.class_names == ("n001", "n002") and source.category_ids == (1, 2)
    split = source.split("train")
    gt = split.gt()
    tiles = [t["file"] for img in gt["images"] for t in img["tiles"]]
    assert sorted(tiles) == sorted(colours)  # 8 train images in 2 tiles, each once.
    for index, img in enumerate(gt["images"]):
        record, pixels = split.example(index)
        for k, tile in enumerate(img["tiles"]):
            name = tile["file"].split("/")[-1]
            i = int(name.split("_")[1].split(".")[0])
            ox, oy = 64 * (k % 2), 64 * (k // 2)
            np.testing.assert_array_equal(
                record.boxes[k], [i + ox, 2 * i + oy, 41 + i + ox, 64 - i + oy]
            )
            assert record.classes[k] == int(name[3]) - 1
            np.testing.assert_allclose(
                pixels[oy : oy + 64, ox : ox + 64].mean((0, 1)), colours[tile["file"]], atol=3
            )
    val = json.loads((tmp_path / "a" / "annotations" / "instances_val.json").read_text())
    assert len(val["images"]) == 1 and len(val["annotations"]) == 4
    with zipfile.ZipFile(tmp_path / "tiny-imagenet-200.zip", "w") as zf:  # As the official zip.
        for path in sorted((tmp_path / "tiny-imagenet-200").rglob("*.*")):
            zf.write(path, path.relative_to(tmp_path).as_posix())
    tiny_boxes.main([*argv, "--out", str(tmp_path / "b"), "--source", str(zf.filename)])
    for name in ("annotations/instances_train.json", "train/000001.jpg", "val/000001.jpg"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    groups = tiny_boxes.tile_groups(400, 100, 5, "train")
    assert len(np.unique(groups)) == 400
    np.testing.assert_array_equal(groups, tiny_boxes.tile_groups(400, 100, 5, "train"))
    assert not np.array_equal(groups, tiny_boxes.tile_groups(400, 100, 6, "train"))
    with pytest.raises(ValueError, match="need 12 images"):
        tiny_boxes.build(tmp_path, tmp_path / "c", num_train=3, num_val=1)


def test_tiny_boxes_class_subset_keeps_the_first_wnids_only(tmp_path):
    _fake_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    counts = tiny_boxes.build(tmp_path, tmp_path / "a", num_train=1, num_val=0, num_classes=1)
    assert counts == {"train": 1, "val": 0}
    train = json.loads((tmp_path / "a" / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in train["categories"]] == ["n001"]
    assert [a["category_id"] for a in train["annotations"]] == [1, 1, 1, 1]
    files = sorted(t["file"] for t in train["images"][0]["tiles"])
    assert files == [f"train/n001/images/n001_{k}.JPEG" for k in range(4)]
    with pytest.raises(ValueError, match="need 8 images, have 4"):  # n001 has 4 train images
        tiny_boxes.build(tmp_path, tmp_path / "b", num_train=2, num_val=0, num_classes=1)
    with pytest.raises(ValueError, match="num_classes 3 not in 1..2"):
        tiny_boxes.build(tmp_path, tmp_path / "b", num_train=1, num_val=0, num_classes=3)


def _synthetic_dataset(tmp_path):
    """Two images with category ids 9, 2, 5 (contiguous: 2->0, 5->1, 9->2) and a crowd box."""
    (tmp_path / "annotations").mkdir()
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        for i, (h, w) in enumerate([(60, 80), (90, 45)], start=1):
            Image.new("RGB", (w, h), (i * 40, 0, 0)).save(tmp_path / split / f"{i}.png")
        anns = [
            {"id": 1, "image_id": 1, "category_id": 9, "bbox": [10, 5, 20, 30], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [40, 10, 30, 40], "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 5, "bbox": [70, 50, 20, 20], "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 2, "bbox": [0, 0, 45, 90], "iscrowd": 0},
        ]  # Box 3 reaches past the image (clipped to x 70..80, y 50..60).
        gt = {
            "images": [
                {"id": 1, "file_name": "1.png", "height": 60, "width": 80},
                {"id": 2, "file_name": "2.png", "height": 90, "width": 45},
            ],
            "annotations": anns,
            "categories": [{"id": c, "name": f"c{c}"} for c in (9, 2, 5)],
        }
        (tmp_path / "annotations" / f"instances_{split}.json").write_text(json.dumps(gt))
    return data.get_source(f"coco_dir:{tmp_path}")


def test_coco_dir_categories_crowd_and_padding(tmp_path, caplog):
    source = _synthetic_dataset(tmp_path)
    assert source.category_ids == (2, 5, 9) and source.class_names == ("c2", "c5", "c9")
    split = source.split("val")
    record = split.records[0]
    np.testing.assert_array_equal(record.classes, [2, 1])  # The crowd box is gone.
    np.testing.assert_array_equal(record.boxes, [[10, 5, 30, 35], [70, 50, 80, 60]])
    assert len(split.gt()["annotations"]) == 4  # COCOeval gets (and ignores) the crowd box.
    (batch,) = data.make_eval_iter(
        split,
        global_batch=4,
        pad_size=(96, 96),
        max_gt=3,
        short_side=60,
        max_size=96,
        process_index=0,
        process_count=1,
    )
    np.testing.assert_array_equal(batch["gt_mask"], [[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(batch["boxes"][~batch["gt_mask"]], 0.0)
    np.testing.assert_array_equal(batch["mask"], [1, 1, 0, 0])
    np.testing.assert_array_equal(batch["image_id"], [1, 2, -1, -1])
    np.testing.assert_array_equal(batch["index"], [0, 1, -1, -1])
    # Image 2 (90x45): short side 60 would make it 120 high > max 96, so 96 / 90.
    np.testing.assert_array_equal(batch["image_size"], [[60, 80], [96, 48], [0, 0], [0, 0]])
    np.testing.assert_allclose(batch["scale"], [1, 96 / 90, 1, 1], rtol=1e-6)
    np.testing.assert_array_equal(batch["image"][0, 60:], 0.0)  # Padding rows and columns.
    np.testing.assert_array_equal(batch["image"][0, :, 80:], 0.0)
    np.testing.assert_array_equal(batch["image"][1, :, 48:], 0.0)
    red = (40 - data.PIXEL_MEAN[0]) / data.PIXEL_STD[0]
    np.testing.assert_allclose(batch["image"][0, :60, :80, 0], red, rtol=1e-6)
    with caplog.at_level(logging.WARNING):
        (batch,) = data.make_eval_iter(
            split,
            global_batch=2,
            pad_size=(96, 96),
            max_gt=1,
            short_side=60,
            max_size=96,
            process_index=0,
            process_count=1,
        )
    assert "beyond max_gt" in caplog.text
    np.testing.assert_array_equal(batch["gt_mask"], [[1], [1]])


def _square_record(box):
    return sources.Record(7, "x", 40, 64, np.array([box], np.float32), np.array([0], np.int32))


def test_flip_moves_the_box_with_its_pixels():
    box = [8.0, 4.0, 24.0, 30.0]
    image = np.zeros((40, 64, 3), np.uint8)
    image[4:30, 8:24] = 255
    for short_side in (40, 80):  # Scale 1 (exact pixels) and 2 (bilinear edges).
        ex, _ = data.transform(
            _square_record(box),
            image,
            short_side=short_side,
            max_size=200,
            flip=True,
            pad_size=(96, 160),
            max_gt=2,
            mean=(0, 0, 0),
            std=(255, 255, 255),
        )
        x1, y1, x2, y2 = ex["boxes"][0]
        s = short_side / 40
        np.testing.assert_allclose(
            [x1, y1, x2, y2], [64 * s - 24 * s, 4 * s, 64 * s - 8 * s, 30 * s]
        )
        inside = ex["image"][int(y1) + 1 : int(y2) - 1, int(x1) + 1 : int(x2) - 1]
        np.testing.assert_allclose(inside, 1.0)
        outside = ex["image"].copy()
        outside[int(y1) - 1 : int(y2) + 1, int(x1) - 1 : int(x2) + 1] = 0
        np.testing.assert_allclose(outside, 0.0, atol=1e-7)


def test_scale_maps_boxes_back_to_original_pixels(sample):
    split = sample.split("train")
    it = data.make_train_iter(split, **TRAIN)
    by_id = {r.image_id: r for r in split.records}
    sizes = set()
    for batch in _take(it, 3):
        for i, image_id in enumerate(batch["image_id"]):
            record = by_id[int(image_id)]
            boxes = batch["boxes"][i][batch["gt_mask"][i]] / batch["scale"][i]
            flipped = boxes.copy()
            flipped[:, [0, 2]] = 128 - boxes[:, [2, 0]]
            err = min(np.abs(boxes - record.boxes).max(), np.abs(flipped - record.boxes).max())
            assert err < 1e-4
            assert tuple(batch["image_size"][i]) == (round(128 * batch["scale"][i]),) * 2
            sizes.add(int(batch["image_size"][i, 0]))
    assert sizes <= {96, 128, 144} and len(sizes) > 1


def test_eval_gt_as_detections_gives_ap_one(sample):
    split = sample.split("val")
    records = []
    for batch in data.make_eval_iter(
        split,
        global_batch=24,
        pad_size=(224, 224),
        max_gt=4,
        short_side=200,
        max_size=224,
        process_index=0,
        process_count=1,
    ):
        scores = np.where(batch["gt_mask"], 0.9, 0.0)
        records += coco.batch_detections(
            batch, batch["boxes"], scores, batch["classes"], batch["gt_mask"]
        )
    assert sorted(r["image_id"] for r in records) == list(range(1, 33))
    metrics = coco.evaluate_coco(split.gt(), records)
    assert metrics["AP"] == pytest.approx(1.0, abs=1e-12)


def test_resume_gives_the_same_batches(sample):
    split = sample.split("train")  # 64 images, local batch 8: 8 steps per epoch.
    assert data.train_steps_per_epoch(split, global_batch=8) == 8
    full = _take(data.make_train_iter(split, **TRAIN), 11)
    resumed = _take(data.make_train_iter(split, **TRAIN, start_step=6), 5)  # Crosses epoch 1.
    for a, b in zip(full[6:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    epoch0 = np.concatenate([b["image_id"] for b in full[:8]])
    assert sorted(epoch0) == list(range(1, 65))  # Each image once per epoch.
    index = np.concatenate([b["index"] for b in full[:8]])
    np.testing.assert_array_equal(index + 1, epoch0)  # Sample ids are 1 + split position.
    epoch1 = np.concatenate([b["image_id"] for b in full[8:]])
    assert not np.array_equal(epoch0[: len(epoch1)], epoch1)  # Reshuffled every epoch.


def test_processes_read_disjoint_shards(sample):
    train, val = sample.split("train"), sample.split("val")
    kw = {k: v for k, v in TRAIN.items() if k not in ("process_index", "process_count")}
    ids = []
    for p in (0, 1):
        it = data.make_train_iter(train, **kw, process_index=p, process_count=2)
        ids.append(np.concatenate([b["image_id"] for b in _take(it, 8)]))
    assert len(ids[0]) == 32  # Local batch 4, 8 steps per epoch per process.
    assert sorted(np.concatenate(ids)) == list(range(1, 65))
    seen = []
    for p in (0, 1, 2):
        batches = list(
            data.make_eval_iter(
                val,
                global_batch=6,
                pad_size=(128, 128),
                max_gt=4,
                short_side=128,
                max_size=128,
                process_index=p,
                process_count=3,
            )
        )
        assert len(batches) == 6  # ceil(ceil(32 / 3) / 2) batches on every process.
        seen += [int(i) for b in batches for i, m in zip(b["image_id"], b["mask"]) if m]
    assert sorted(seen) == list(range(1, 33))


def test_missing_data_errors_say_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotations/instances_<split>.json"):
        data.get_source(f"coco_dir:{tmp_path / 'nowhere'}")
    (tmp_path / "annotations").mkdir()
    with pytest.raises(FileNotFoundError, match="instances_train"):
        data.get_source(f"coco_dir:{tmp_path}")
    with pytest.raises(FileNotFoundError) as err:
        data.get_source("coco2017", data_dir=str(tmp_path))
    message = str(err.value)
    assert str(tmp_path) in message and "downloads/manual" in message
    assert "tfds build coco/2017" in message and "annotations_trainval2017.zip" in message
    with pytest.raises(ValueError, match="known"):
        data.get_source("voc")
    with pytest.raises(ValueError, match="multiples of 32"):
        data.make_eval_iter(
            None,
            global_batch=2,
            pad_size=(100, 96),
            max_gt=1,
            short_side=96,
            max_size=96,
            process_index=0,
            process_count=1,
        )


def test_tfds_coco_examples_become_records_and_ground_truth(monkeypatch):
    from luminet_jax.detection import tfds_coco

    assert len(tfds_coco.COCO_CATEGORY_IDS) == 80 and tfds_coco.COCO_CATEGORY_IDS[-1] == 90
    jpeg = io.BytesIO()
    Image.new("RGB", (60, 40), (90, 20, 10)).save(jpeg, format="JPEG")
    example = {  # TFDS coco/2017 layout: bbox normalized (ymin, xmin, ymax, xmax).
        "image": jpeg.getvalue(),
        "image/id": np.int64(42),
        "image/filename": "000042.jpg",
        "objects": {
            "bbox": np.array([[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.5, 0.5]], np.float32),
            "label": np.array([79, 3]),
            "is_crowd": np.array([False, True]),
            "area": np.array([500, 300]),
            "id": np.array([7, 8]),
        },
    }

    class FakeBuilder:
        data_dir = "fake"
        labels = types.SimpleNamespace(names=[f"c{i}" for i in range(80)])
        info = types.SimpleNamespace(features={"objects": {"label": labels}})

        def as_data_source(self, split, decoders):
            assert split == "validation" and "image" in decoders
            return [example]

    monkeypatch.setattr(tfds_coco, "_builder", lambda data_dir: FakeBuilder())
    source = data.get_source("coco2017")
    assert source.num_classes == 80 and source.category_ids[3] == 4
    split = source.split("validation")
    record, image = split.example(0)
    assert image.shape == (40, 60, 3) and record.image_id == 42
    np.testing.assert_allclose(record.boxes, [[30, 10, 60, 30]])  # The crowd box is dropped.
    np.testing.assert_array_equal(record.classes, [79])
    gt = split.gt()
    assert gt["images"] == [{"id": 42, "height": 40, "width": 60, "file_name": "000042.jpg"}]
    anns = gt["annotations"]
    assert [a["category_id"] for a in anns] == [90, 4] and [a["iscrowd"] for a in anns] == [0, 1]
    np.testing.assert_allclose([a["bbox"] for a in anns], [[30, 10, 30, 20], [0, 0, 30, 20]])
    (batch,) = data.make_eval_iter(
        split,
        global_batch=1,
        pad_size=(64, 64),
        max_gt=2,
        short_side=40,
        max_size=64,
        process_index=0,
        process_count=1,
    )
    records = coco.batch_detections(
        batch, batch["boxes"], np.ones((1, 2)), batch["classes"], batch["gt_mask"]
    )
    assert coco.evaluate_coco(gt, records)["AP"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.slow
def test_shipped_sample_rebuilds_byte_identical(tmp_path, shared_data):
    import hashlib
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_sample", sources.ASSETS / "make_tiny_boxes_sample.py"
    )
    make_sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_sample)
    make_sample.main(shared_data / MINI, tmp_path / "sample.tar.gz")
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
    assert digest(tmp_path / "sample.tar.gz") == digest(sources.ASSETS / sources.SAMPLE_ARCHIVE)
