"""benchmarks/data_bench.py: the ImageNet-like JPEG recipe (DESIGN.md section 9) and the JSON."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from benchmarks import data_bench

KEYS = {"pipeline", "images_per_s", "images_per_s_per_core", "cores"}


def test_mosaic_recipe():
    tiles = np.random.default_rng(1).integers(0, 256, (100, 64, 64, 3), dtype=np.uint8)
    tiles[:] = tiles.mean(axis=(1, 2), keepdims=True).astype(np.uint8)  # flat: JPEG keeps them
    jpegs = data_bench.mosaics(tiles, 3)
    rng = np.random.default_rng(0)
    for data in jpegs:
        chosen = rng.choice(len(tiles), 48, replace=False)  # One generator, one call per mosaic.
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG" and image.size == (500, 375) and image.mode == "RGB"
            pixels = np.asarray(image, np.float64)
        for k, tile in enumerate(chosen):  # Row-major, 8 across; sample each tile's center.
            y, x = 64 * (k // 8) + 32, 64 * (k % 8) + 32
            if y < 375 and x < 500:
                np.testing.assert_allclose(pixels[y, x], tiles[tile, 0, 0], atol=4)


def test_imagenet_like_jpegs_from_the_archive(shared_data):
    jpegs = data_bench.imagenet_like_jpegs(shared_data / data_bench.ARCHIVE.name, count=8)
    sizes = [len(j) for j in jpegs]
    assert 70 * 1024 < np.mean(sizes) < 110 * 1024  # about 88 KiB over all 1,024
    with Image.open(io.BytesIO(jpegs[0])) as image:
        assert image.size == (500, 375)


@pytest.mark.integration  # heavy: the second tier
def test_json_entries(shared_data, tmp_path):
    out = tmp_path / "data.json"
    argv = "--pipelines imagenet --images 16 --batch 4 --batches 1 --rounds 1"
    data_bench.main([*argv.split(), "--out", str(out), "--archive",
                     str(shared_data / data_bench.ARCHIVE.name)])  # fmt: skip
    entries = json.loads(out.read_text())
    names = [e["pipeline"] for e in entries]
    assert {"imagenet_train", "imagenet_eval", "imagenet_train_before"} <= set(names)
    for e in entries:
        assert KEYS <= set(e) and e["cores"] == len(os.sched_getaffinity(0))
        assert e["images_per_s"] > 0
        assert e["images_per_s_per_core"] == pytest.approx(e["images_per_s"] / e["cores"], 0.01)
    assert "ratio_to_before" in entries[names.index("imagenet_train")]


def test_skips_without_the_archive(tmp_path, capsys):
    argv = ["--pipelines", "imagenet,coco", "--archive", str(tmp_path / "absent.tar.gz")]
    assert data_bench.main(argv) == []
    assert capsys.readouterr().out.count("is absent") == 2
