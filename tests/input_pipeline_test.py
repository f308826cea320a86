"""Tests for luminet_jax.data.input_pipeline and the project builders (no network)."""

import io
import pickle
import tarfile
import zipfile

import jax
import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

from luminet_jax.data import augment, input_pipeline  # noqa: E402
from luminet_jax.data.builders import tiny_imagenet  # noqa: E402

CLASSES = ("c0", "c1", "c2", "c3")
TRAIN_PER_CLASS, TEST_PER_CLASS, SIZE = 10, 3, 8
NUM_TRAIN, NUM_TEST = 4 * TRAIN_PER_CLASS, 4 * TEST_PER_CLASS
MEAN, STD = np.float32(augment.IMAGENET_MEAN), np.float32(augment.IMAGENET_STD)


def _png(value, size=SIZE):
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """image_folder dataset whose example i is a constant image of value 5 * i (PNG, lossless)."""
    root = tmp_path_factory.mktemp("folder")
    example_id = 0
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True)
            for k in range(per_class):
                (root / split / cls / f"{k:02d}.png").write_bytes(_png(5 * example_id))
                example_id += 1
    return f"image_folder:{root}"


def _ids(images):
    """Example ids from normalized constant images (augment='none')."""
    pixels = (images[:, 0, 0, :] * STD + MEAN) * 255
    return np.round(pixels[:, 0] / 5).astype(int)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError, match="known: cifar10, cifar100, imagenet2012, tiny_imagenet"):
        input_pipeline.dataset_info("mnist")


def test_missing_data_errors_say_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-100-python.tar.gz.*wget"):
        input_pipeline.dataset_info("cifar100_local", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="tiny-imagenet-200.zip.*downloads/manual"):
        input_pipeline.dataset_info("tiny_imagenet", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="tfds build cifar100"):
        input_pipeline.dataset_info("cifar100", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        input_pipeline.dataset_info(f"image_folder:{tmp_path}/nothing")


def test_cifar10_sample_counts_and_label_order():
    info = input_pipeline.dataset_info("cifar10_sample")
    assert (info.num_classes, info.num_train, info.num_eval) == (10, 3000, 1000)
    assert info.num_train + info.num_eval == 4000
    assert info.image_size == 32 and info.mean == augment.CIFAR10_MEAN
    images, labels = input_pipeline.load_arrays("cifar10_sample", "train")
    assert images.shape == (3000, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels), [300] * 10)
    # Stored order is classes.txt order (airplane=0 ... truck=9), 300 files each.
    np.testing.assert_array_equal(labels, np.repeat(np.arange(10), 300))
    _, eval_labels = input_pipeline.load_arrays("cifar10_sample", "eval")
    np.testing.assert_array_equal(np.bincount(eval_labels), [100] * 10)


@pytest.mark.integration  # heavy: the second tier
def test_train_iter_shapes_and_determinism(folder):
    batches = _take(input_pipeline.make_train_iter(folder, global_batch=8, seed=0), 3)
    again = _take(input_pipeline.make_train_iter(folder, global_batch=8, seed=0), 3)
    other = _take(input_pipeline.make_train_iter(folder, global_batch=8, seed=1), 3)
    assert batches[0]["image"].shape == (8, SIZE, SIZE, 3)
    assert batches[0]["image"].dtype == np.float32 and batches[0]["label"].dtype == np.int32
    for a, b in zip(batches, again):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(batches[0]["image"], other[0]["image"])


@pytest.mark.parametrize("augment_name", ["cifar", "none"])
def test_resume_at_start_step_gives_the_same_batches(folder, augment_name):
    # 40 examples, batch 8: 5 steps per epoch; resume inside epoch 0, at its end, inside epoch 1.
    make = lambda step: input_pipeline.make_train_iter(
        folder, global_batch=8, seed=3, start_step=step, augment=augment_name
    )
    full = _take(make(0), 12)
    for start in (3, 5, 7):
        for got, want in zip(_take(make(start), 12 - start), full[start:]):
            np.testing.assert_array_equal(got["image"], want["image"])
            np.testing.assert_array_equal(got["label"], want["label"])


def test_train_steps_per_epoch(folder, monkeypatch):
    assert input_pipeline.train_steps_per_epoch(folder, global_batch=8) == 5
    assert input_pipeline.train_steps_per_epoch(folder, global_batch=16) == 2
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    assert input_pipeline.train_steps_per_epoch(folder, global_batch=12) == 3  # 13 // 4


def test_each_epoch_visits_every_example_once(folder):
    batches = _take(
        input_pipeline.make_train_iter(folder, global_batch=8, seed=0, augment="none"), 10
    )
    epochs = [
        np.concatenate([_ids(b["image"]) for b in batches[e * 5 : e * 5 + 5]]) for e in (0, 1)
    ]
    for ids in epochs:
        np.testing.assert_array_equal(np.sort(ids), np.arange(NUM_TRAIN))
    assert not np.array_equal(epochs[0], epochs[1])
    # "index" numbers the examples 0..N-1 and always names the same example.
    index = np.concatenate([b["index"] for b in batches])
    ids = np.concatenate(epochs)
    np.testing.assert_array_equal(np.sort(index[:NUM_TRAIN]), np.arange(NUM_TRAIN))
    assert len(set(zip(index.tolist(), ids.tolist()))) == NUM_TRAIN
    # train_labels is indexed like "index" (read without decoding images).
    by_index = input_pipeline.train_labels(folder)
    assert by_index.shape == (NUM_TRAIN,)
    np.testing.assert_array_equal(by_index[index], np.concatenate([b["label"] for b in batches]))
    labels = np.concatenate([b["label"] for b in batches[:5]])
    np.testing.assert_array_equal(labels, epochs[0] // TRAIN_PER_CLASS)  # sorted class folders


def test_eval_iter_counts_every_example_once(folder):
    batches = list(input_pipeline.make_eval_iter(folder, global_batch=8))
    assert len(batches) == 2
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(mask, [1.0] * NUM_TEST + [0.0] * 4)
    images = np.concatenate([b["image"] for b in batches])
    np.testing.assert_array_equal(_ids(images[:NUM_TEST]), NUM_TRAIN + np.arange(NUM_TEST))
    assert np.all(images[NUM_TEST:] == 0)
    labels = np.concatenate([b["label"] for b in batches])[:NUM_TEST]
    np.testing.assert_array_equal(labels, np.arange(NUM_TEST) // TEST_PER_CLASS)
    # A fresh iterator each call.
    assert len(list(input_pipeline.make_eval_iter(folder, global_batch=8))) == 2


def test_two_processes_split_the_data(folder, monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    seen_eval, seen_train, num_batches = [], [], []
    for process in (0, 1):
        monkeypatch.setattr(jax, "process_index", lambda p=process: p)
        batches = list(input_pipeline.make_eval_iter(folder, global_batch=8))
        num_batches.append(len(batches))
        assert batches[0]["image"].shape[0] == 4
        seen_eval += [_ids(b["image"])[b["mask"] > 0] for b in batches]
        train = _take(
            input_pipeline.make_train_iter(folder, global_batch=8, seed=0, augment="none"), 5
        )
        seen_train += [_ids(b["image"]) for b in train]
    assert num_batches[0] == num_batches[1]
    np.testing.assert_array_equal(
        np.sort(np.concatenate(seen_eval)), NUM_TRAIN + np.arange(NUM_TEST)
    )
    np.testing.assert_array_equal(np.sort(np.concatenate(seen_train)), np.arange(NUM_TRAIN))


def test_image_size_resizes(folder):
    batch = next(input_pipeline.make_train_iter(folder, global_batch=8, seed=0, image_size=4))
    assert batch["image"].shape == (8, 4, 4, 3)


@pytest.mark.integration  # heavy: the second tier
def test_cifar100_and_imagenet_with_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=20):
        info = input_pipeline.dataset_info("cifar100", data_dir=tmp_path)
        assert info.num_classes == 100 and info.mean == augment.CIFAR100_MEAN
        batch = next(
            input_pipeline.make_train_iter("cifar100", global_batch=8, seed=0, data_dir=tmp_path)
        )
        assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
        assert batch["label"].dtype == np.int32 and np.all(
            (0 <= batch["label"]) & (batch["label"] < 100)
        )
        batches = list(input_pipeline.make_eval_iter("cifar100", global_batch=8, data_dir=tmp_path))
        assert [b["mask"].sum() for b in batches] == [8, 8, 4]
        images, labels = input_pipeline.load_arrays("cifar100", "train", data_dir=tmp_path)
        assert images.shape == (20, 32, 32, 3) and labels.shape == (20,)
        batch = next(
            input_pipeline.make_train_iter(
                "imagenet2012", global_batch=4, seed=0, data_dir=tmp_path, image_size=24
            )
        )
        assert batch["image"].shape == (4, 24, 24, 3)
        assert input_pipeline.dataset_info("imagenet2012", data_dir=tmp_path).num_classes == 1000


def _jpeg(value, mode="RGB"):
    buffer = io.BytesIO()
    size = (tiny_imagenet.IMAGE_SIZE,) * 2
    Image.new(mode, size, value if mode == "L" else (value, value, value)).save(buffer, "JPEG")
    return buffer.getvalue()


def _tiny_files():
    wnids = ["n003", "n001", "n002"]  # not sorted: labels follow the sorted order
    files = {"tiny-imagenet-200/wnids.txt": ("\n".join(wnids) + "\n").encode()}
    for wnid in wnids:
        for k in range(2):
            mode = "L" if (wnid, k) == ("n002", 1) else "RGB"
            files[f"tiny-imagenet-200/train/{wnid}/images/{wnid}_{k}.JPEG"] = _jpeg(60, mode)
        files[f"tiny-imagenet-200/train/{wnid}/{wnid}_boxes.txt"] = b""
    annotations = [("val_0.JPEG", "n002"), ("val_1.JPEG", "n003"), ("val_2.JPEG", "n001")]
    for name, _ in annotations:
        files[f"tiny-imagenet-200/val/images/{name}"] = _jpeg(120)
    lines = "".join(f"{name}\t{wnid}\t0\t0\t10\t10\n" for name, wnid in annotations)
    files["tiny-imagenet-200/val/val_annotations.txt"] = lines.encode()
    return files, dict(annotations)


def _file_labels(data_dir, split):
    builder = tiny_imagenet.TinyImagenet(data_dir=data_dir)
    examples = tfds.as_numpy(builder.as_dataset(split=split))
    names = builder.info.features["label"].names
    return {ex["file_name"].decode(): names[ex["label"]] for ex in examples}, names


@pytest.mark.parametrize("layout", ["zip", "folder"])
def test_tiny_imagenet_builder(tmp_path, layout):
    files, val_wnids = _tiny_files()
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    if layout == "zip":
        with zipfile.ZipFile(manual / tiny_imagenet.ZIP_NAME, "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)
    else:
        for name, data in files.items():
            (manual / name).parent.mkdir(parents=True, exist_ok=True)
            (manual / name).write_bytes(data)
    info = input_pipeline.dataset_info("tiny_imagenet", data_dir=tmp_path)
    assert (info.num_classes, info.num_train, info.num_eval, info.image_size) == (3, 6, 3, 64)
    val, names = _file_labels(tmp_path, "validation")
    assert names == ["n001", "n002", "n003"]
    assert val == {f"val/images/{k}": wnid for k, wnid in val_wnids.items()}
    train, _ = _file_labels(tmp_path, "train")
    assert all(path.split("/")[1] == wnid for path, wnid in train.items()) and len(train) == 6
    images, labels = input_pipeline.load_arrays("tiny_imagenet", "train", data_dir=tmp_path)
    assert images.shape == (6, 64, 64, 3)  # the grayscale JPEG decodes to 3 channels
    np.testing.assert_array_equal(np.bincount(labels), [2, 2, 2])
    batch = next(
        input_pipeline.make_train_iter(
            "tiny_imagenet", global_batch=2, seed=0, data_dir=tmp_path, image_size=32
        )
    )
    assert batch["image"].shape == (2, 32, 32, 3)


def _extract_real_tiny(archive_path, manual, keep=None):
    """Extracts the real mini archive; with `keep` (number of classes) only the first classes."""
    with tarfile.open(archive_path) as archive:
        infos = archive.getmembers()
        if keep is None:
            archive.extractall(manual, filter="data")
            return
        top = "tiny-imagenet-200/"
        wnids = archive.extractfile(top + "wnids.txt").read().decode().split()[:keep]
        lines = archive.extractfile(top + "val/val_annotations.txt").read().decode().splitlines()
        lines = [line for line in lines if line.split("\t")[1] in wnids]
        val_names = {f"{top}val/images/{line.split()[0]}" for line in lines}
        chosen = [
            m
            for m in infos
            if m.isfile()
            and (m.name in val_names or any(m.name.startswith(f"{top}train/{w}/") for w in wnids))
        ]
        archive.extractall(manual, members=chosen, filter="data")
    (manual / top / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (manual / top / "val/val_annotations.txt").write_text("\n".join(lines) + "\n")


def _check_real_tiny(data_dir, num_classes):
    info = input_pipeline.dataset_info("tiny_imagenet", data_dir=data_dir)
    assert (info.num_classes, info.num_train, info.num_eval) == (
        num_classes,
        100 * num_classes,
        50 * num_classes,
    )
    val, names = _file_labels(data_dir, "validation")
    assert names == sorted(names) and len(val) == 50 * num_classes
    annotations = data_dir / "downloads/manual/tiny-imagenet-200/val/val_annotations.txt"
    expected = {
        f"val/images/{line.split()[0]}": line.split()[1]
        for line in annotations.read_text().splitlines()
    }
    assert val == expected
    train, _ = _file_labels(data_dir, "train")
    assert all(path.split("/")[1] == wnid for path, wnid in train.items())
    batch = next(input_pipeline.make_eval_iter("tiny_imagenet", global_batch=64, data_dir=data_dir))
    assert batch["image"].shape == (64, 64, 64, 3) and batch["mask"].sum() == 64


@pytest.mark.integration  # heavy: the second tier
def test_tiny_imagenet_real_files_three_classes(shared_data, tmp_path):
    manual = tmp_path / "downloads" / "manual"
    _extract_real_tiny(shared_data / "tiny-imagenet-200-mini.tar.gz", manual, keep=3)
    _check_real_tiny(tmp_path, 3)


@pytest.mark.slow
def test_tiny_imagenet_real_mini(shared_data, tmp_path):
    manual = tmp_path / "downloads" / "manual"
    _extract_real_tiny(shared_data / "tiny-imagenet-200-mini.tar.gz", manual)
    _check_real_tiny(tmp_path, 200)


def test_cifar100_local_from_generated_archive(tmp_path):
    rng = np.random.default_rng(0)
    rows = {
        "train": rng.integers(0, 256, (10, 3072), dtype=np.uint8),
        "test": rng.integers(0, 256, (5, 3072), dtype=np.uint8),
    }
    fine = {"train": list(range(90, 100)), "test": [1, 2, 3, 4, 5]}
    with tarfile.open(tmp_path / "cifar-100-python.tar.gz", "w:gz") as archive:
        blobs = {
            name: {
                b"data": rows[name],
                b"fine_labels": fine[name],
                b"coarse_labels": [0] * len(fine[name]),
            }
            for name in ("train", "test")
        }
        blobs["meta"] = {b"fine_label_names": [f"class{i}".encode() for i in range(100)]}
        for name, obj in blobs.items():
            data = pickle.dumps(obj)
            entry = tarfile.TarInfo(f"cifar-100-python/{name}")
            entry.size = len(data)
            archive.addfile(entry, io.BytesIO(data))
    info = input_pipeline.dataset_info("cifar100_local", data_dir=tmp_path)
    assert (info.num_classes, info.num_train, info.num_eval) == (100, 10, 5)
    images, labels = input_pipeline.load_arrays("cifar100_local", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(images, rows["test"].reshape(5, 3, 32, 32).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(labels, fine["test"])
    batch = next(
        input_pipeline.make_train_iter("cifar100_local", global_batch=8, seed=0, data_dir=tmp_path)
    )
    assert batch["image"].shape == (8, 32, 32, 3) and set(batch["label"]) <= set(fine["train"])


@pytest.mark.slow
def test_autoaugment_pipeline():
    batch = next(
        input_pipeline.make_train_iter(
            "cifar10_sample", global_batch=8, seed=0, augment="autoaugment"
        )
    )
    assert batch["image"].shape == (8, 32, 32, 3) and np.isfinite(batch["image"]).all()


# --- uint8 batches (normalized on the accelerator) and the fast ImageNet path. ---

GRADIENT_HW = (192, 256)


def _gradient_jpeg() -> bytes:
    """R = x (0..255), G = y (0..191), B = 128: a crop's box can be read back from its pixels."""
    height, width = GRADIENT_HW
    x = np.broadcast_to(np.arange(width), GRADIENT_HW)
    y = np.broadcast_to(np.arange(height)[:, None], GRADIENT_HW)
    pixels = np.stack([x, y, np.full(GRADIENT_HW, 128)], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=100, subsampling=0)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def gradient_folder(tmp_path_factory):
    """image_folder of 4 x 16 train and 4 x 2 test copies of the gradient JPEG."""
    root = tmp_path_factory.mktemp("gradient")
    data = _gradient_jpeg()
    for split, per_class in (("train", 16), ("test", 2)):
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True)
            for k in range(per_class):
                (root / split / cls / f"{k:02d}.jpg").write_bytes(data)
    return f"image_folder:{root}"


def _boxes(pixels):
    """(top, left, h, w) and flips of crops of the gradient image, from (N, S, S, 3) pixels.

    Antialiased bilinear resampling keeps a linear ramp linear: away from the crop's borders,
    output pixel i holds start + (i + 0.5) * step - 0.5 (step = crop extent / S).
    """
    size = pixels.shape[1]
    red = pixels[..., 0].mean(axis=1)  # (N, S): x along the output's columns
    green = pixels[..., 1].mean(axis=2)  # y along its rows
    flipped = red[:, 1] > red[:, -2]
    red = np.where(flipped[:, None], red[:, ::-1], red)

    def fit(v):
        step = (v[:, -2] - v[:, 1]) / (size - 3)
        return v[:, 1] + 0.5 - 1.5 * step, step * size

    (top, h), (left, w) = fit(green), fit(red)
    return np.stack([top, left, h, w], axis=1), flipped


@pytest.mark.integration  # heavy: the second tier
def test_fast_imagenet_crops_follow_todays_distribution(gradient_folder):
    """The new pipeline's RandomResizedCrop boxes (and flips) are today's, example by example:
    same sampler, same stateless seeds; only the decoding and the resize changed."""
    from luminet_jax.data import sources

    source = sources.get_source(gradient_folder)
    kwargs = dict(global_batch=16, seed=5, augment="imagenet", image_size=32)
    new = input_pipeline._train_dataset(source, output="uint8", **kwargs)
    old = input_pipeline._train_dataset(source, legacy=True, **kwargs)
    new = np.concatenate([b["image"] for b in _take(input_pipeline._numpy_iter(new), 24)])
    old = np.concatenate([b["image"] for b in _take(input_pipeline._numpy_iter(old), 24)])
    assert new.dtype == np.uint8 and old.dtype == np.float32
    new_boxes, new_flips = _boxes(new.astype(np.float64))
    old_boxes, old_flips = _boxes((old * STD + MEAN) * 255)
    np.testing.assert_array_equal(new_flips, old_flips)
    np.testing.assert_allclose(new_boxes, old_boxes, atol=2.5)  # uint8 rounding: <= 1.7 px seen
    height, width = GRADIENT_HW
    stats = []
    for boxes, flips in ((new_boxes, new_flips), (old_boxes, old_flips)):
        scale = boxes[:, 2] * boxes[:, 3] / (height * width)
        log_ratio = np.log(boxes[:, 3] / boxes[:, 2])
        # RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3)) bounds, with read-back slack.
        assert scale.min() > 0.07 and scale.max() < 1.05
        assert np.abs(log_ratio).max() < np.log(4 / 3) + 0.05
        assert 0.3 < flips.mean() < 0.7 and len(flips) == 384
        stats.append([scale.mean(), *np.quantile(scale, [0.25, 0.5, 0.75]), log_ratio.mean()])
        stats[-1] += [*np.quantile(log_ratio, [0.25, 0.5, 0.75])]
    np.testing.assert_allclose(stats[0], stats[1], atol=0.01)


@pytest.mark.parametrize(
    "folder_name, augment_name",
    [("gradient_folder", "imagenet"), ("folder", "imagenet"), ("folder", "cifar")],
)
@pytest.mark.integration  # heavy: the second tier
def test_uint8_batches_and_their_host_normalization(request, folder_name, augment_name):
    """output="uint8" yields the pixels; output="float32" is exactly their host normalization.

    Covers the ImageNet-style paths for JPEG (partial decode) and PNG (whole decode), CIFAR-style
    crops, eval batches with their zero padding, and resuming with start_step."""
    name = request.getfixturevalue(folder_name)

    def make(output, step=0):
        return input_pipeline.make_train_iter(
            name, global_batch=8, seed=1, augment=augment_name, image_size=16, output=output,
            start_step=step,
        )  # fmt: skip

    pixels, floats = _take(make("uint8"), 6), _take(make("float32"), 6)
    for p, f in zip(pixels, floats):
        assert p["image"].dtype == np.uint8 and p["image"].shape == (8, 16, 16, 3)
        np.testing.assert_array_equal(f["image"], augment.normalize(p["image"], MEAN, STD).numpy())
        np.testing.assert_array_equal(p["label"], f["label"])
    for got, want in zip(_take(make("uint8", step=3), 3), pixels[3:]):
        np.testing.assert_array_equal(got["image"], want["image"])
    evals = {
        output: list(
            input_pipeline.make_eval_iter(name, global_batch=12, image_size=16, output=output)
        )
        for output in input_pipeline.OUTPUTS
    }
    for p, f in zip(evals["uint8"], evals["float32"]):
        assert p["image"].dtype == np.uint8
        real = p["mask"] > 0
        np.testing.assert_array_equal(
            f["image"][real], augment.normalize(p["image"][real], MEAN, STD).numpy()
        )
        assert np.all(p["image"][~real] == 0) and np.all(f["image"][~real] == 0)
    with pytest.raises(ValueError, match="Unknown output"):
        input_pipeline.make_train_iter(name, global_batch=8, seed=0, output="float16")
