"""What every detection source yields: a `Split` of images with their `Record`s.

The types shared by the sources (`detection.sources`: COCO-format folders, the shipped sample;
`detection.tfds_coco`: TFDS coco/2017) and the batcher (`detection.data`).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps


@dataclasses.dataclass(frozen=True)
class Record:
    """One image's annotations: boxes x1y1x2y2 in original pixels, crowd boxes removed."""

    image_id: int
    file_name: str
    height: int
    width: int
    boxes: np.ndarray  # (n, 4) float32
    classes: np.ndarray  # (n,) int32 contiguous


@dataclasses.dataclass(frozen=True)
class Split:
    """A split of `size` images: `example(i)` -> (Record, uint8 (h, w, 3) RGB image); `gt()` the
    COCO-format ground truth for `coco.evaluate_coco`; `records` all Records in image-id order
    (None where only `example` reads them, as TFDS); `sizes()` the (size, 2) (height, width)
    of every image where `records` is None (a pass over the images; None: unknown).
    """

    size: int
    example: Callable[[int], tuple[Record, np.ndarray]]
    gt: Callable[[], dict]
    records: Sequence[Record] | None = None
    sizes: Callable[[], np.ndarray] | None = None


def decode(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes -> uint8 (h, w, 3) RGB, EXIF orientation applied (as detectron2)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


# EXIF orientations that swap width and height (transposed, rotated by 90 or 270 degrees).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def decoded_size(data: bytes) -> tuple[int, int]:
    """(height, width) that `decode(data)` gives, from the header only (no pixel decoding)."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if image.getexif().get(0x0112) in _SWAPPING_ORIENTATIONS:  # 0x0112: Orientation
            width, height = height, width
    return height, width
