"""A tiny Faster R-CNN and synthetic batches for the detection tests (shapes only matter).

64 x 64 noise images with 1-2 bright boxes each, drawn in the channel of their class; the
last ground-truth slot is always padding. Compiling even this detector's train step takes
minutes on 2 CPU cores, so the tests that run it are marked slow.
"""

import numpy as np

from benchmarks import detection_step

NUM_CLASSES = 3
# configs/detection_smoke.py's detector (tests/detection_benchmarks_test.py holds the
# benchmark's "tiny" size to that config), with 3 classes.
TINY = dict(num_classes=NUM_CLASSES, **detection_step.SIZES["tiny"][1])
SIZE = 64


def batch(b: int, seed: int = 0) -> dict:
    """b synthetic 64x64 images, bright rectangles on noise, their boxes as ground truth."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 0.3, (b, SIZE, SIZE, 3)).astype(np.float32)
    g = 3
    boxes = np.zeros((b, g, 4), np.float32)
    classes = np.zeros((b, g), np.int32)
    mask = np.zeros((b, g), bool)
    for i in range(b):
        for j in range(1 + i % 2):  # 1 or 2 objects; the last slot is always padding
            w, h = rng.integers(12, 36, 2)
            x, y = rng.integers(0, SIZE - w), rng.integers(0, SIZE - h)
            boxes[i, j] = (x, y, x + w, y + h)
            classes[i, j] = rng.integers(0, NUM_CLASSES)
            images[i, y : y + h, x : x + w, classes[i, j]] += 2.0
            mask[i, j] = True
    sizes = np.tile(np.asarray([[SIZE, SIZE]], np.int32), (b, 1))
    sizes[1::2, 1] = 60  # some images with a padded right edge
    return {
        "image": images,
        "boxes": boxes,
        "classes": classes,
        "gt_mask": mask,
        "image_size": sizes,
    }
