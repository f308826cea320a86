"""Dataset sources: resolve a dataset name to its info and a reader of its splits.

A source reads one process's slice of a split as a tf.data.Dataset of {"image", "label"}
(encoded bytes or uint8 pixels); `input_pipeline` decodes, shuffles, augments and batches.
TFDS datasets (cifar10, cifar100, imagenet2012 and the project's tiny_imagenet builder) go
through `builder.as_dataset(split=tfds.split_for_jax_process(...))`; local archives
(cifar100_local, image_folder:<path>, cifar10_sample) are read into host memory first.

`load_arrays` reads a whole split as uint8 arrays (device-resident training). For the local
sources it needs neither TensorFlow nor tfds (JPEGs are decoded with Pillow), and this module
imports them only when a TFDS dataset or a tf.data reader is asked for, so device-resident
training on local data runs where TensorFlow is not installed.
"""

import dataclasses
import io
import os
import pathlib
from collections.abc import Callable

import numpy as np

from luminet_jax.data import stats
from luminet_jax.data.builders import local

_PACKAGE = pathlib.Path(__file__).resolve().parents[1]
# The repository's assets/, installed as package data in luminet_jax/assets/ (setup.py).
ASSETS = next(
    (p for p in (_PACKAGE / "assets", _PACKAGE.parent / "assets") if p.is_dir()),
    _PACKAGE.parent / "assets",
)
SAMPLE_ARCHIVE = "cifar10-sample.tar.gz"
KNOWN_DATASETS = (
    "cifar10",
    "cifar100",
    "imagenet2012",
    "tiny_imagenet",
    "cifar100_local",
    "cifar10_sample",
    "image_folder:<path>",
)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know about a dataset (counts are global, all processes)."""

    num_classes: int
    num_train: int
    num_eval: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train_split: str
    eval_split: str


@dataclasses.dataclass(frozen=True)
class Source:
    """A dataset: its info, how to read a split, and its default augmentation."""

    info: DatasetInfo
    # (split, process_index, process_count, drop_remainder) -> (dataset, count, encoded).
    read: Callable[[str, int, int, bool], tuple]
    default_augment: str
    native_size: int | None  # Stored image size; None for variable sizes.
    imagenet_eval: bool = False  # Eval by resize 256 + center crop 224 (else resize if needed).
    # split -> (uint8 images (N, H, W, 3), int32 labels (N,)) without TensorFlow; None: the
    # split is read through `read` (tf.data).
    arrays: Callable[[str], tuple[np.ndarray, np.ndarray]] | None = None


def tensorflow():
    """TensorFlow, imported on first use, with the accelerators hidden from it (it only does
    input work here, and must not reserve memory that JAX needs)."""
    import tensorflow as tf  # noqa: PLC0415

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # Devices were already initialised by an earlier import.
        pass
    return tf


def _tfds():
    tensorflow()
    import tensorflow_datasets as tfds  # noqa: PLC0415

    return tfds


def _tfds_source(
    builder, *, mean, std, image_size, native_size, train, evl, augment, hint, imagenet_eval=False
):
    """A source over a TFDS builder (prepared, or mocked by tfds.testing.mock_data)."""

    tfds = _tfds()

    def read(split, process_index, process_count, drop_remainder):
        sub = tfds.split_for_jax_process(
            split,
            process_index=process_index,
            process_count=process_count,
            drop_remainder=drop_remainder,
        )
        try:
            ds = builder.as_dataset(
                split=sub, decoders={"image": tfds.decode.SkipDecoding()}, shuffle_files=False
            )
        except Exception as e:
            if builder.is_prepared():
                raise
            raise FileNotFoundError(
                f"Dataset {builder.name} is not prepared (looked in {builder.data_dir}). {hint}"
            ) from e
        ds = ds.map(lambda ex: {"image": ex["image"], "label": ex["label"]})
        return ds, int(ds.cardinality()), True

    def count(split):
        if builder.is_prepared():
            return builder.info.splits[split].num_examples
        return read(split, 0, 1, False)[1]  # Mocked data: the generator's cardinality.

    num_classes = builder.info.features["label"].num_classes
    info = DatasetInfo(num_classes, count(train), count(evl), image_size, mean, std, train, evl)
    return Source(info, read, augment, native_size, imagenet_eval)


def _local_source(data: local.LocalData, *, mean, std, eval_split, native_size, image_size=None):
    """A source over splits held in host memory (numpy)."""

    def read(split, process_index, process_count, drop_remainder):
        if split not in data.splits:
            raise ValueError(f"No split {split!r}; available: {sorted(data.splits)}")
        part = data.splits[split]
        n = len(part)
        base, extra = divmod(n, process_count)
        if drop_remainder:
            extra = 0
        start = process_index * base + min(process_index, extra)
        stop = start + base + (process_index < extra)
        images, labels = part.images[start:stop], part.labels[start:stop]
        tf = tensorflow()
        if part.encoded:  # A list, not a fixed-width numpy bytes array (it pads with NULs).
            images = tf.constant(images.tolist(), dtype=tf.string, shape=[len(images)])
        ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
        return ds, stop - start, part.encoded

    def arrays(split):
        if split not in data.splits:
            raise ValueError(f"No split {split!r}; available: {sorted(data.splits)}")
        part = data.splits[split]
        images = _decode_all(part.images, split) if part.encoded else part.images
        return images.astype(np.uint8), part.labels.astype(np.int32)

    info = DatasetInfo(
        len(data.class_names),
        len(data.splits["train"]),
        len(data.splits[eval_split]),
        image_size or native_size,
        mean,
        std,
        "train",
        eval_split,
    )
    return Source(info, read, "cifar", native_size, arrays=arrays)


def _decode_all(encoded: np.ndarray, split: str) -> np.ndarray:
    """Encoded images (JPEG, PNG, ...) -> uint8 (N, H, W, 3), decoded with Pillow.

    # Reference: Pillow's accurate integer DCT, as torchvision's loader (PIL) decodes; TF's
    # default (INTEGER_FAST) differs by up to a few levels on JPEGs.
    """
    from PIL import Image  # noqa: PLC0415

    def decode(data):
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))

    images = [decode(data) for data in encoded]
    shapes = sorted({image.shape for image in images})
    if len(shapes) > 1:
        raise ValueError(
            f"The {split} images have different sizes {shapes[:4]}; device-resident data needs "
            "one size (set dataset.device_resident=False to stream and resize them)."
        )
    return np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8)


def load_arrays(
    name: str, split: str, data_dir: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Loads a whole split into host memory, for device-resident training (`DeviceData`).

    Args:
      name: dataset name (fixed-size images: cifar10, cifar100, tiny_imagenet, ...).
      split: a split name, or "train" / "eval" for the dataset's train / eval split.
      data_dir: TFDS data dir, or the folder holding the local archive; None for the default.

    Returns:
      (uint8 images (N, H, W, 3), int32 labels (N,)), all examples, in stored order. Local
      sources are read without TensorFlow.
    """
    source = get_source(name, data_dir)
    split = {"eval": source.info.eval_split}.get(split, split)
    if source.imagenet_eval:
        raise ValueError(f"{name} has variable-size images; load_arrays needs a fixed size")
    if source.arrays is not None:
        return source.arrays(split)
    tf, tfds = tensorflow(), _tfds()
    ds, _, encoded = source.read(split, 0, 1, False)
    if encoded:
        decode = lambda x: tf.io.decode_image(x, channels=3, expand_animations=False)  # noqa: E731
        ds = ds.map(lambda ex: {"image": decode(ex["image"]), "label": ex["label"]})
    images, labels = [], []
    # Raises (tf InvalidArgumentError) if the images differ in size.
    for batch in tfds.as_numpy(ds.batch(4096)):
        images.append(batch["image"])
        labels.append(batch["label"])
    return np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int32)


def _tfds_hint(name: str, data_dir) -> str:
    target = data_dir or "~/tensorflow_datasets"
    if name == "imagenet2012":
        return (
            "ImageNet needs a manual download: put ILSVRC2012_img_train.tar and "
            f"ILSVRC2012_img_val.tar in {target}/downloads/manual/, then run "
            f"`tfds build imagenet2012 --data_dir={target}`."
        )
    return f"Download and prepare it with `tfds build {name} --data_dir={target}`."


def _tiny_imagenet_builder(data_dir):
    _tfds()  # tensorflow first: the accelerators hidden from it
    from luminet_jax.data.builders import tiny_imagenet  # noqa: PLC0415

    builder = tiny_imagenet.TinyImagenet(data_dir=data_dir)
    if not builder.is_prepared():
        dirs = local.default_dirs(data_dir)
        found = next((d for d in dirs[::-1] if tiny_imagenet.find_source(d)), None)
        if found is None:
            where = " or ".join(str(d) for d in dirs[::-1])
            raise FileNotFoundError(
                f"tiny_imagenet: no {tiny_imagenet.ZIP_NAME} or {tiny_imagenet.FOLDER_NAME}/ in "
                f"{where}.{tiny_imagenet.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        builder.download_and_prepare(
            download_config=_tfds().download.DownloadConfig(manual_dir=os.fspath(found))
        )
    return builder


# TFDS datasets: name -> the `_tfds_source` arguments besides the builder and the hint.
_CIFAR = dict(image_size=32, native_size=32, train="train", evl="test", augment="cifar")
_TFDS = {
    "cifar10": dict(mean=stats.CIFAR10_MEAN, std=stats.CIFAR10_STD, **_CIFAR),
    "cifar100": dict(mean=stats.CIFAR100_MEAN, std=stats.CIFAR100_STD, **_CIFAR),
    "imagenet2012": dict(
        mean=stats.IMAGENET_MEAN,
        std=stats.IMAGENET_STD,
        image_size=224,
        native_size=None,
        train="train",
        evl="validation",
        augment="imagenet",
        imagenet_eval=True,
    ),
}


def _cifar100_local(data_dir) -> Source:
    dirs = local.default_dirs(data_dir)
    path = local.find_cifar100_python(dirs)
    if path is None:
        raise FileNotFoundError(
            f"cifar100_local: no {local.CIFAR100_ARCHIVE} (or {local.CIFAR100_FOLDER}/) in "
            f"{' or '.join(map(str, dirs))}. Download it with "
            f"`wget -P {dirs[0]} {local.CIFAR100_URL}` (or pass data_dir=<its folder>)."
        )
    return _local_source(
        local.cifar100_python(os.fspath(path)),
        mean=stats.CIFAR100_MEAN,
        std=stats.CIFAR100_STD,
        eval_split="test",
        native_size=32,
    )


def _cifar10_sample(data_dir) -> Source:
    candidates = [pathlib.Path(data_dir) / SAMPLE_ARCHIVE] if data_dir else []
    candidates.append(ASSETS / SAMPLE_ARCHIVE)
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"cifar10_sample: {SAMPLE_ARCHIVE} not found in {' or '.join(map(str, candidates))}"
            "; it ships in the repository's assets/ (rebuild: assets/make_cifar10_sample.py)."
        )
    return _local_source(
        local.image_folder(os.fspath(path)),
        mean=stats.CIFAR10_MEAN,
        std=stats.CIFAR10_STD,
        eval_split="test",
        native_size=32,
    )


def _image_folder(path: str) -> Source:
    data = local.image_folder(os.fspath(pathlib.Path(path).expanduser()))
    height, width = local.first_image_shape(data, "train")
    # Reference: no dataset statistics for arbitrary folders; ImageNet's are the usual default.
    # Images of other sizes than the first one are resized to it (or to image_size).
    return _local_source(
        data,
        mean=stats.IMAGENET_MEAN,
        std=stats.IMAGENET_STD,
        eval_split=local.eval_split_name(data),
        native_size=None,
        image_size=min(height, width),
    )


def _tiny_imagenet(data_dir) -> Source:
    return _tfds_source(
        _tiny_imagenet_builder(data_dir),
        mean=stats.TINY_IMAGENET_MEAN,
        std=stats.TINY_IMAGENET_STD,
        image_size=64,
        native_size=64,
        train="train",
        evl="validation",
        augment="cifar",
        hint="",
    )


_LOCAL = {
    "tiny_imagenet": _tiny_imagenet,
    "cifar100_local": _cifar100_local,
    "cifar10_sample": _cifar10_sample,
}


def get_source(name: str, data_dir=None) -> Source:
    """Resolves a dataset name to a `Source` (raises ValueError listing known names)."""
    if name in _TFDS:
        builder = _tfds().builder(name, data_dir=data_dir)
        return _tfds_source(builder, hint=_tfds_hint(name, data_dir), **_TFDS[name])
    if name in _LOCAL:
        return _LOCAL[name](data_dir)
    if name.startswith("image_folder:"):
        return _image_folder(name.split(":", 1)[1])
    raise ValueError(f"Unknown dataset {name!r}; known: {', '.join(KNOWN_DATASETS)}")
