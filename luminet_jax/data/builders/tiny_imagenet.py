"""Tiny-ImageNet-200 as a TFDS builder that reads the standard archive from `manual_dir`.

TFDS hosts no Tiny-ImageNet, so this project builder reads the public release
(http://cs231n.stanford.edu/tiny-imagenet-200.zip): either the zip itself or its extracted
`tiny-imagenet-200/` folder, placed in the manual directory. The layout is

    tiny-imagenet-200/wnids.txt
    tiny-imagenet-200/train/<wnid>/images/<wnid>_<k>.JPEG
    tiny-imagenet-200/val/images/val_<k>.JPEG
    tiny-imagenet-200/val/val_annotations.txt   (file name, wnid, box; tab separated)

Splits: "train" and "validation" (the labelled val set; the public test set has no labels).
Labels are the index of the wnid in the *sorted* list of wnids.txt, which is also the order of
torchvision's `ImageFolder` over `train/`, so label numbers match PyTorch pipelines. The JPEG
bytes are stored unchanged; the 64x64 grayscale images decode to 3 channels.
"""

import io
import os
import pathlib
import zipfile
from collections.abc import Iterator

import tensorflow_datasets as tfds

ZIP_NAME = "tiny-imagenet-200.zip"
FOLDER_NAME = "tiny-imagenet-200"
IMAGE_SIZE = 64

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
Download http://cs231n.stanford.edu/tiny-imagenet-200.zip and put `{ZIP_NAME}` (or the extracted
`{FOLDER_NAME}/` folder) in the manual directory: `<data_dir>/downloads/manual/` by default, or
the `data_dir` given to luminet_jax (`--config.data_dir=...`), e.g.
  mkdir -p ~/tensorflow_datasets/downloads/manual && \\
  wget -P ~/tensorflow_datasets/downloads/manual http://cs231n.stanford.edu/tiny-imagenet-200.zip
"""


def find_source(directory: os.PathLike | str) -> pathlib.Path | None:
    """Returns the zip or extracted folder of Tiny-ImageNet-200 in `directory`, or None.

    Accepts `directory/tiny-imagenet-200.zip`, `directory/tiny-imagenet-200/` or a `directory`
    that is itself the extracted folder (has `wnids.txt` and `train/`).
    """
    directory = pathlib.Path(directory)
    if (directory / "wnids.txt").is_file() and (directory / "train").is_dir():
        return directory
    for candidate in (directory / FOLDER_NAME, directory / ZIP_NAME):
        if candidate.exists():
            return candidate
    return None


class _Tree:
    """Uniform read access to the release as a folder or as the zip (paths relative to its top)."""

    def __init__(self, source: pathlib.Path):
        self._zip = zipfile.ZipFile(source) if source.is_file() else None
        self._root = source
        if self._zip is not None:
            names = self._zip.namelist()
            tops = {name.split("/", 1)[0] for name in names if name.endswith("wnids.txt")}
            self._prefix = f"{FOLDER_NAME}/" if FOLDER_NAME in tops else ""
            self._names = [name[len(self._prefix) :] for name in names]

    def read_bytes(self, relpath: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(self._prefix + relpath)
        return (self._root / relpath).read_bytes()

    def read_text(self, relpath: str) -> str:
        return self.read_bytes(relpath).decode("utf-8")

    def train_files(self, wnid: str) -> list[str]:
        prefix = f"train/{wnid}/images/"
        if self._zip is not None:
            names = [n for n in self._names if n.startswith(prefix) and n.endswith(".JPEG")]
        else:
            folder = self._root / prefix
            names = [prefix + p.name for p in folder.iterdir() if p.suffix == ".JPEG"]
        return sorted(names)


def read_wnids(tree: _Tree) -> list[str]:
    """The class wnids in label order (sorted)."""
    return sorted(line.strip() for line in tree.read_text("wnids.txt").splitlines() if line.strip())


class TinyImagenet(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Tiny-ImageNet-200 (200 classes, 64x64 JPEGs) from the standard zip or folder."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Train and validation splits; labels = sorted wnids."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    name = "tiny_imagenet"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="Tiny-ImageNet-200: 200 ImageNet classes at 64x64 (cs231n).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format="jpeg"
                    ),
                    # Names (and so the count, 200 in the release) come from wnids.txt.
                    "label": tfds.features.ClassLabel(),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        source = find_source(dl_manager.manual_dir)
        if source is None:
            raise FileNotFoundError(
                f"Tiny-ImageNet not found in {dl_manager.manual_dir}.\n"
                + MANUAL_DOWNLOAD_INSTRUCTIONS
            )
        tree = _Tree(source)
        wnids = read_wnids(tree)
        if not wnids:
            raise ValueError(f"{source}: wnids.txt lists no classes")
        self.info.features["label"].names = wnids
        return {
            "train": self._generate_examples(tree, wnids, "train"),
            "validation": self._generate_examples(tree, wnids, "validation"),
        }

    def _generate_examples(self, tree: _Tree, wnids: list[str], split: str):
        if split == "train":
            return self._generate_train(tree, wnids)
        return self._generate_val(tree, wnids)

    def _generate_train(self, tree: _Tree, wnids: list[str]) -> Iterator[tuple[str, dict]]:
        for wnid in wnids:
            for relpath in tree.train_files(wnid):
                yield relpath, self._example(tree, relpath, wnid)

    def _generate_val(self, tree: _Tree, wnids: list[str]) -> Iterator[tuple[str, dict]]:
        known = set(wnids)
        for line in tree.read_text("val/val_annotations.txt").splitlines():
            fields = line.strip().split("\t")
            if len(fields) < 2:
                continue
            file_name, wnid = fields[0], fields[1]
            if wnid not in known:
                raise ValueError(f"val_annotations.txt: {file_name} has unknown wnid {wnid}")
            relpath = f"val/images/{file_name}"
            yield relpath, self._example(tree, relpath, wnid)

    @staticmethod
    def _example(tree: _Tree, relpath: str, wnid: str) -> dict:
        return {
            "image": io.BytesIO(tree.read_bytes(relpath)),
            "label": wnid,
            "file_name": relpath,
        }
