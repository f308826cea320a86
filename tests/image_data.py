"""Generated image folders for tests: each class a colour plus noise (linearly separable).

A resnet8 fits these in a few dozen steps, so a test can assert that training lowers the
loss by a wide margin, which holds on any machine (unlike a trend on real images over a
few noisy steps).
"""

from __future__ import annotations

import io
import pathlib

import numpy as np
from PIL import Image


def colour_folder(
    root: pathlib.Path, *, classes: int = 4, train: int = 16, test: int = 8, size: int = 8
) -> str:
    """Writes train/<class>/*.png and test/<class>/*.png under `root`; returns its path."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (classes, 3))
    for split, count in (("train", train), ("test", test)):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                noise = rng.integers(-40, 40, (size, size, 3))
                pixels = np.clip(colours[c] + noise, 0, 255).astype(np.uint8)
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="PNG")
                (folder / f"{i:03d}.png").write_bytes(buffer.getvalue())
    return str(root)
