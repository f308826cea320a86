"""Readers for datasets that live in local files and need no TFDS preparation.

- `cifar100_python`: the common `cifar-100-python.tar.gz` (pickled "train"/"test" batches with
  "data" rows in CHW order and "fine_labels"), or its extracted `cifar-100-python/` folder.
- `image_folder`: `<root>/<split>/<class>/<image>` trees, as a folder or a .tar/.tar.gz whose
  single top folder is the root. Labels follow `<root>/classes.txt` (one name per line) where it
  exists, else the sorted class folder names of the train split (torchvision `ImageFolder`).
  Images stay encoded (original bytes); the input pipeline decodes them.

Each reader returns a `LocalData` of `LocalSplit`s held in host memory (numpy).
"""

import dataclasses
import functools
import io
import os
import pathlib
import pickle
import tarfile

import numpy as np

CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
EVAL_SPLIT_NAMES = ("test", "val", "validation")


@dataclasses.dataclass(frozen=True)
class LocalSplit:
    """One split in host memory.

    Attributes:
      images: uint8 (N, H, W, 3) pixels, or an object array (N,) of encoded image bytes.
      labels: int32 (N,).
    """

    images: np.ndarray
    labels: np.ndarray

    @property
    def encoded(self) -> bool:
        return self.images.dtype == object

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class LocalData:
    """A dataset read from local files: its splits (by name) and class names in label order."""

    splits: dict[str, LocalSplit]
    class_names: tuple[str, ...]


def find_cifar100_python(directories: list[pathlib.Path]) -> pathlib.Path | None:
    """First `cifar-100-python.tar.gz` or `cifar-100-python/` found in `directories`."""
    for directory in directories:
        for candidate in (directory / CIFAR100_ARCHIVE, directory / CIFAR100_FOLDER):
            if candidate.exists():
                return candidate
    return None


@functools.lru_cache(maxsize=2)
def cifar100_python(path: str) -> LocalData:
    """Reads CIFAR-100 (python version) from the tar.gz or the extracted folder at `path`."""
    path = pathlib.Path(path)
    blobs = {}
    if path.is_dir():
        for name in ("train", "test", "meta"):
            blobs[name] = (path / name).read_bytes()
    else:
        with tarfile.open(path, "r:*") as tar:
            for info in tar:
                base = info.name.rsplit("/", 1)[-1]
                if info.isfile() and base in ("train", "test", "meta"):
                    blobs[base] = tar.extractfile(info).read()
    missing = {"train", "test", "meta"} - set(blobs)
    if missing:
        raise ValueError(f"{path} is not a cifar-100-python archive: missing {sorted(missing)}")
    splits = {}
    for name in ("train", "test"):
        batch = pickle.loads(blobs[name], encoding="bytes")
        data = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        splits[name] = LocalSplit(
            np.ascontiguousarray(data), np.asarray(batch[b"fine_labels"], np.int32)
        )
    meta = pickle.loads(blobs["meta"], encoding="bytes")
    names = tuple(n.decode() for n in meta[b"fine_label_names"])
    return LocalData(splits, names)


def _folder_files(root: pathlib.Path) -> dict[str, bytes]:
    """All files under a folder, by path relative to it."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _tar_files(path: pathlib.Path) -> dict[str, bytes]:
    """All files in a tar archive, by path relative to its single top folder (if any)."""
    files = {}
    with tarfile.open(path, "r:*") as tar:
        for info in tar:
            if info.isfile():
                files[info.name] = tar.extractfile(info).read()
    tops = {name.split("/", 1)[0] for name in files}
    if len(tops) == 1 and all("/" in name for name in files):
        files = {name.split("/", 1)[1]: data for name, data in files.items()}
    return files


@functools.lru_cache(maxsize=4)
def image_folder(path: str) -> LocalData:
    """Reads an image-folder dataset from a folder or a .tar/.tar.gz archive.

    Args:
      path: the root holding `train/<class>/*` and `test/` (or `val/`, `validation/`) in the
        same layout; optionally `classes.txt` giving the label order.

    Returns:
      LocalData with encoded images.
    """
    root = pathlib.Path(path)
    if not root.exists():
        raise FileNotFoundError(f"image folder dataset {root} does not exist")
    files = _folder_files(root) if root.is_dir() else _tar_files(root)
    by_split: dict[str, list[tuple[str, str]]] = {}
    for name in sorted(files):
        parts = name.split("/")
        if len(parts) == 3 and parts[2].lower().endswith(IMAGE_SUFFIXES):
            by_split.setdefault(parts[0], []).append((parts[1], name))
    if "train" not in by_split:
        raise FileNotFoundError(f"{root}: no train/<class>/<image> files found")
    if "classes.txt" in files:
        class_names = tuple(files["classes.txt"].decode().split())
    else:
        class_names = tuple(sorted({cls for cls, _ in by_split["train"]}))
    index = {cls: i for i, cls in enumerate(class_names)}
    splits = {}
    for split, items in by_split.items():
        unknown = {cls for cls, _ in items} - set(index)
        if unknown:
            raise ValueError(f"{root}: classes {sorted(unknown)} in {split}/ are not in train/")
        images = np.empty(len(items), dtype=object)
        images[:] = [files[name] for _, name in items]
        labels = np.asarray([index[cls] for cls, _ in items], np.int32)
        splits[split] = LocalSplit(images, labels)
    return LocalData(splits, class_names)


def eval_split_name(data: LocalData) -> str:
    """The held-out split of an image-folder dataset: test, val or validation."""
    for name in EVAL_SPLIT_NAMES:
        if name in data.splits:
            return name
    raise ValueError(f"no eval split (one of {EVAL_SPLIT_NAMES}) in {sorted(data.splits)}")


def first_image_shape(data: LocalData, split: str) -> tuple[int, int]:
    """(H, W) of the first image of a split (decoded with Pillow for encoded images)."""
    first = data.splits[split].images[0]
    if not data.splits[split].encoded:
        return tuple(first.shape[:2])
    from PIL import Image  # Pillow comes with tensorflow-datasets.

    with Image.open(io.BytesIO(first)) as image:
        return image.height, image.width


def default_dirs(data_dir: str | os.PathLike | None) -> list[pathlib.Path]:
    """Where local archives are searched: data_dir and data_dir/downloads/manual."""
    if data_dir is None:
        data_dir = os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    base = pathlib.Path(data_dir).expanduser()
    return [base, base / "downloads" / "manual"]
