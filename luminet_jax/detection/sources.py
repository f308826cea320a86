"""Detection sources: COCO-format datasets as `Split`s of `Record`s (read by `detection.data`).

Names (`get_source(name, data_dir)`):
  - "coco_dir:<path>": any COCO-format dataset: `<path>/annotations/instances_<split>.json`
    plus the images in `<path>/<split>/` (split names train/val or train2017/val2017), read
    with the json module; `<path>` may also be a small .tar(.gz) of that layout.
  - "tiny_boxes_sample": the tiled Tiny-ImageNet boxes sample shipped in assets/ (64 train + 32
    val 128x128 images, 200 classes; `detection.tiny_boxes` builds larger ones).
  - "coco2017": TFDS `coco/2017` (prepared as array_record, see `tfds_coco.TFDS_HINT`).
Category ids map to contiguous classes 0..K-1 in sorted id order; background is K (last), as
detectron2. Crowd boxes (iscrowd=1) are dropped from the training targets (COCOeval ignores
them in the ground truth, which keeps them), boxes are clipped to the image, empty ones dropped.
"""

import collections
import dataclasses
import functools
import json
import pathlib
import tarfile
from collections.abc import Callable

import numpy as np

from luminet_jax.detection import records, tfds_coco

ASSETS = pathlib.Path(__file__).resolve().parents[2] / "assets"
SAMPLE_ARCHIVE = "tiny-boxes-sample.tar.gz"
KNOWN_SOURCES = ("coco_dir:<path>", "tiny_boxes_sample", "coco2017")


Record = records.Record
Split = records.Split
decode = records.decode


@dataclasses.dataclass(frozen=True)
class DetectionSource:
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]  # class index k <-> dataset category id category_ids[k]
    splits: dict[str, Callable[[], Split]]  # loaders; use `split(name)`
    train_split: str
    eval_split: str

    def split(self, name: str) -> Split:
        """The split `name`, loaded on first use (raises KeyError listing the splits)."""
        if name not in self.splits:
            raise KeyError(f"No split {name!r}; available: {sorted(self.splits)}")
        return self.splits[name]()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def records_from_coco(gt: dict) -> list[Record]:
    """COCO dict -> `Record`s in sorted image-id order (crowd and empty boxes removed)."""
    index = {cid: k for k, cid in enumerate(sorted(int(c["id"]) for c in gt["categories"]))}
    per_image = collections.defaultdict(list)
    for ann in gt.get("annotations", []):
        if not ann.get("iscrowd", 0):
            per_image[int(ann["image_id"])].append(ann)
    records = []
    for img in sorted(gt["images"], key=lambda i: int(i["id"])):
        height, width = int(img["height"]), int(img["width"])
        anns = per_image[int(img["id"])]
        xywh = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        boxes = np.clip(boxes, 0, [width, height, width, height])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        classes = np.array([index[int(a["category_id"])] for a in anns], np.int32).reshape(-1)
        records.append(
            Record(
                int(img["id"]),
                img["file_name"],
                height,
                width,
                boxes[keep].astype(np.float32),
                classes[keep],
            )
        )
    return records


def _coco_split(gt: dict, read_bytes: Callable[[str], bytes]) -> Split:
    records = records_from_coco(gt)

    def example(i):
        record = records[i]
        image = decode(read_bytes(record.file_name))
        if image.shape[:2] != (record.height, record.width):
            raise ValueError(
                f"image {record.image_id} ({record.file_name}): decoded {image.shape[:2]}, "
                f"annotation says {(record.height, record.width)}"
            )
        return record, image

    return Split(len(records), example, lambda: gt, records)


def coco_dir_source(path) -> DetectionSource:
    """A COCO-format dataset: a folder (or small .tar/.tar.gz) with annotations/instances_*.json.

    Split names are taken from the json files: "train"/"val" or "train2017"/"val2017".
    """
    path = pathlib.Path(path).expanduser()
    if path.is_file() and tarfile.is_tarfile(path):  # Small archives: read into memory.
        with tarfile.open(path) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        tops = {name.split("/")[0] for name in files}
        prefix = f"{tops.pop()}/" if len(tops) == 1 else ""
        files = {name.removeprefix(prefix): data for name, data in files.items()}
        read = files.__getitem__
        names = list(files)
    elif path.is_dir():
        read = lambda name: (path / name).read_bytes()
        names = [p.relative_to(path).as_posix() for p in (path / "annotations").glob("*.json")]
    else:
        raise FileNotFoundError(
            f"{path}: no COCO-format dataset (annotations/instances_<split>.json + <split>/ "
            "images); for COCO 2017 unzip annotations_trainval2017.zip, train2017.zip and "
            "val2017.zip from https://cocodataset.org/#download there"
        )
    jsons = sorted(
        n for n in names if n.startswith("annotations/instances_") and n.endswith(".json")
    )
    available = [n.removeprefix("annotations/instances_").removesuffix(".json") for n in jsons]
    train = next((s for s in ("train", "train2017") if s in available), None)
    evl = next((s for s in ("val", "val2017") if s in available), None)
    if train is None or evl is None:
        raise FileNotFoundError(
            f"{path}: need annotations/instances_train(2017).json and instances_val(2017).json; "
            f"found {jsons}"
        )
    load_json = lambda split: json.loads(read(f"annotations/instances_{split}.json"))
    categories = sorted(load_json(evl)["categories"], key=lambda c: int(c["id"]))

    def loader(split):
        return functools.cache(
            lambda: _coco_split(load_json(split), lambda name: read(f"{split}/{name}"))
        )

    return DetectionSource(
        class_names=tuple(c["name"] for c in categories),
        category_ids=tuple(int(c["id"]) for c in categories),
        splits={s: loader(s) for s in available},
        train_split=train,
        eval_split=evl,
    )


def get_source(name: str, data_dir=None) -> DetectionSource:
    """Resolves a detection dataset name (`KNOWN_SOURCES`) to a `DetectionSource`."""
    if name == "tiny_boxes_sample":
        candidates = [pathlib.Path(data_dir) / SAMPLE_ARCHIVE] if data_dir else []
        candidates.append(ASSETS / SAMPLE_ARCHIVE)
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(
                f"tiny_boxes_sample: {SAMPLE_ARCHIVE} not found in "
                f"{' or '.join(map(str, candidates))}; it ships in the repository's assets/ "
                "(rebuild: assets/make_tiny_boxes_sample.py)"
            )
        return coco_dir_source(path)
    if name.startswith("coco_dir:"):
        return coco_dir_source(name.split(":", 1)[1])
    if name == "coco2017":
        splits = {
            s: functools.cache(lambda s=s: tfds_coco.split(s, data_dir))
            for s in ("train", "validation")
        }
        return DetectionSource(
            class_names=tfds_coco.class_names(data_dir),
            category_ids=tfds_coco.COCO_CATEGORY_IDS,
            splits=splits,
            train_split="train",
            eval_split="validation",
        )
    raise ValueError(f"Unknown detection dataset {name!r}; known: {', '.join(KNOWN_SOURCES)}")
