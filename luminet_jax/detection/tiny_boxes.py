"""Tiny-ImageNet boxes: a small real detection set written as a COCO-format dataset.

Each 128x128 image tiles four 64x64 Tiny-ImageNet images 2x2 (tile k at x offset 64 * (k % 2),
y offset 64 * (k // 2)) and carries their four real boxes, from `<wnid>_boxes.txt` (train) and
`val_annotations.txt` (val); the class is the image's index in `wnids.txt` (200 classes,
category id = index + 1). Which images share a tile is a seeded permutation of all images of
the split, so the set is a pure function of (source, seed, counts).

Tiny-ImageNet boxes are inclusive pixel indices (x_min, y_min, x_max, y_max in 0..63, a full
image is 0 0 63 63); in COCO's continuous coordinates that box is [x_min, y_min, x_max + 1,
y_max + 1], so a one-pixel-wide box keeps width 1 instead of becoming empty.

Output layout (what `detection.data.coco_dir_source` reads):

    OUT/annotations/instances_train.json   OUT/train/000001.jpg ...
    OUT/annotations/instances_val.json     OUT/val/000001.jpg ...

Each image entry also lists its "tiles" (source file, source box, offset) for checking.

    python -m luminet_jax.detection.tiny_boxes \
        --source ../shared/data/tiny-imagenet-200-mini.tar.gz --out /tmp/tiny-boxes \
        --train 4000 --val 1000
"""

import argparse
import io
import json
import os
import pathlib
import tarfile
import zipfile
from collections.abc import Callable

import numpy as np
from PIL import Image

TILE = 64
GRID = 2
SIZE = TILE * GRID
FOLDER = "tiny-imagenet-200"
SPLITS = ("train", "val")
JPEG_QUALITY = 90


def _opener(source) -> Callable[[Callable[[str], bool]], dict[str, bytes]]:
    """A reader: `read(wanted)` -> {name: bytes} of the files whose name (relative to
    tiny-imagenet-200/) satisfies `wanted`, in one pass over an archive."""
    source = pathlib.Path(source).expanduser()
    if source.is_dir():
        root = source / FOLDER if (source / FOLDER / "wnids.txt").exists() else source
        if not (root / "wnids.txt").exists():
            raise FileNotFoundError(f"{source}: no wnids.txt (expected a {FOLDER}/ folder)")

        def read_dir(wanted):
            paths = (p for p in root.rglob("*") if p.is_file())
            return {n: p.read_bytes() for p in paths if wanted(n := p.relative_to(root).as_posix())}

        return read_dir
    if zipfile.is_zipfile(source):

        def read_zip(wanted):
            with zipfile.ZipFile(source) as zf:
                names = [n for n in zf.namelist() if not n.endswith("/")]
                return {_strip(n): zf.read(n) for n in names if wanted(_strip(n))}

        return read_zip
    if tarfile.is_tarfile(source):

        def read_tar(wanted):
            with tarfile.open(source) as tar:
                return {
                    _strip(m.name): tar.extractfile(m).read()
                    for m in tar
                    if m.isfile() and wanted(_strip(m.name))
                }

        return read_tar
    raise FileNotFoundError(
        f"{source}: not a {FOLDER}/ folder, .zip or .tar(.gz); get Tiny-ImageNet from "
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
    )


def _strip(name: str) -> str:
    """'tiny-imagenet-200/train/x' -> 'train/x' (archives may or may not have the top folder)."""
    parts = name.lstrip("./").split("/")
    return "/".join(parts[1:]) if parts[0] == FOLDER else "/".join(parts)


def read_annotations(source) -> tuple[list[str], dict[str, list[tuple[str, int, tuple]]]]:
    """Tiny-ImageNet's own labels and boxes.

    Args:
      source: a tiny-imagenet-200 folder (or its parent), .zip or .tar(.gz).

    Returns:
      (wnids in wnids.txt order, {split: [(image path, class index, (x0, y0, x1, y1)
      inclusive pixel box)] sorted by path}) for splits "train" and "val".
    """
    text = lambda n: n == "wnids.txt" or n.endswith(("_boxes.txt", "_annotations.txt"))
    files = {n: b.decode() for n, b in _opener(source)(text).items()}
    wnids = files["wnids.txt"].split()
    index = {w: i for i, w in enumerate(wnids)}
    items = {"train": [], "val": []}
    for name, text in files.items():
        rows = [line.split("\t") for line in text.splitlines() if line.strip()]
        if name.startswith("train/") and name.endswith("_boxes.txt"):
            wnid = name.split("/")[1]
            for file, *box in rows:
                path = f"train/{wnid}/images/{file}"
                items["train"].append((path, index[wnid], tuple(map(int, box))))
        elif name == "val/val_annotations.txt":
            for file, wnid, *box in rows:
                items["val"].append((f"val/images/{file}", index[wnid], tuple(map(int, box))))
    for split in SPLITS:
        items[split].sort()
    return wnids, items


def tile_groups(count: int, num_tiles: int, seed: int, split: str) -> np.ndarray:
    """(num_tiles, 4) indices into a split's sorted items: a seeded permutation, 4 per tile."""
    if GRID * GRID * num_tiles > count:
        raise ValueError(f"{split}: {num_tiles} tiles need {4 * num_tiles} images, have {count}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    return rng.permutation(count)[: GRID * GRID * num_tiles].reshape(num_tiles, GRID * GRID)


def tile_box(box: tuple, k: int) -> list[float]:
    """Inclusive source box of tile k -> continuous x1y1x2y2 in the tiled image."""
    x0, y0, x1, y1 = box
    ox, oy = TILE * (k % GRID), TILE * (k // GRID)
    return [float(x0 + ox), float(y0 + oy), float(x1 + 1 + ox), float(y1 + 1 + oy)]


def build(
    source,
    out,
    *,
    num_train: int,
    num_val: int,
    seed: int = 0,
    quality=JPEG_QUALITY,
    num_classes: int = 0,
):
    """Writes the tiled COCO-format set to `out` (see the module docstring); returns counts.

    `num_classes` > 0 keeps only the first `num_classes` wnids of wnids.txt (their images and
    categories, ids 1..num_classes); 0 keeps all 200.
    """
    out = pathlib.Path(out)
    wnids, items = read_annotations(source)
    if num_classes:
        if not 0 < num_classes <= len(wnids):
            raise ValueError(f"num_classes {num_classes} not in 1..{len(wnids)}")
        wnids = wnids[:num_classes]
        items = {s: [it for it in v if it[1] < num_classes] for s, v in items.items()}
    plan = {"train": num_train, "val": num_val}
    groups = {s: tile_groups(len(items[s]), n, seed, s) for s, n in plan.items()}
    wanted = {items[s][i][0] for s in plan for i in groups[s].reshape(-1)}
    pixels = _opener(source)(wanted.__contains__)  # One more pass over an archive.
    counts = {}
    for split in plan:
        (out / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for tile_index, group in enumerate(groups[split]):
            image_id = tile_index + 1
            canvas = np.zeros((SIZE, SIZE, 3), np.uint8)
            tiles = []
            for k, item_index in enumerate(group):
                path, label, box = items[split][item_index]
                tile = np.asarray(Image.open(io.BytesIO(pixels[path])).convert("RGB"))
                if tile.shape != (TILE, TILE, 3):
                    raise ValueError(f"{path}: {tile.shape}, expected ({TILE}, {TILE}, 3)")
                ox, oy = TILE * (k % GRID), TILE * (k // GRID)
                canvas[oy : oy + TILE, ox : ox + TILE] = tile
                x1, y1, x2, y2 = tile_box(box, k)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": label + 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                    }
                )
                tiles.append({"file": path, "box": list(box), "offset": [ox, oy]})
            file_name = f"{image_id:06d}.jpg"
            Image.fromarray(canvas).save(out / split / file_name, quality=quality)
            images.append(
                {
                    "id": image_id,
                    "file_name": file_name,
                    "height": SIZE,
                    "width": SIZE,
                    "tiles": tiles,
                }
            )
        categories = [
            {"id": i + 1, "name": w, "supercategory": "tiny-imagenet"} for i, w in enumerate(wnids)
        ]
        dataset = {
            "info": {"description": f"Tiny-ImageNet boxes, 2x2 tiles, seed {seed}"},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        (out / "annotations").mkdir(parents=True, exist_ok=True)
        with open(out / "annotations" / f"instances_{split}.json", "w") as f:
            json.dump(dataset, f, separators=(",", ":"))
        counts[split] = len(images)
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="tiny-imagenet-200 folder, .zip or .tar.gz")
    parser.add_argument("--out", required=True, help="output folder (COCO layout)")
    parser.add_argument("--train", type=int, default=4000, help="train tiles (4 images each)")
    parser.add_argument("--val", type=int, default=1000, help="val tiles")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quality", type=int, default=JPEG_QUALITY, help="JPEG quality")
    parser.add_argument(
        "--classes", type=int, default=0, help="keep the first N wnids only (0: all 200)"
    )
    args = parser.parse_args(argv)
    counts = build(
        args.source,
        args.out,
        num_train=args.train,
        num_val=args.val,
        seed=args.seed,
        quality=args.quality,
        num_classes=args.classes,
    )
    print(f"{os.fspath(args.out)}: {counts['train']} train, {counts['val']} val tiled images")


if __name__ == "__main__":
    main()
