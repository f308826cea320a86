"""Input-pipeline throughput: ImageNet (train, eval), device-resident CIFAR, COCO detection.

    python benchmarks/data_bench.py --out data.json [--rounds 10] [--batch 64] [--batches 4]
        [--pipelines imagenet,device_data,coco] [--archive PATH]

Writes a JSON list of {"pipeline", "images_per_s", "images_per_s_per_core", "cores"} (cores =
`len(os.sched_getaffinity(0))`, the cores this process may use; per core = images_per_s / cores)
plus details ("median_of_rounds", "ratio_to_before" (the median over rounds of the paired
ratio to the "_before" pipeline timed in the same round), "batch", "load_avg").

ImageNet entries read ImageNet-like JPEGs made in memory (DESIGN.md section 9,
`imagenet_like_jpegs`): 1,024 mosaics of 8 x 6 Tiny-ImageNet photos cropped to 500 x 375,
Pillow quality 90 (about 88 KiB, like ImageNet's); skipped with a message where the archive
../shared/data/tiny-imagenet-200-mini.tar.gz is absent. They run the real tf.data pipelines of
`input_pipeline` (shuffle, per-example stateless seeds, map with AUTOTUNE over all cores,
batch, prefetch, numpy batches), over an in-memory source:
  imagenet_train          RandomResizedCrop 224 + flip, uint8 batches (the new pipeline)
  imagenet_train_float32  the same, normalized to float32 on the host
  imagenet_train_before   the pipeline before issue 21 (whole decode, float resize,
                          float32 batches), `input_pipeline._legacy_preprocess`
  imagenet_eval, imagenet_eval_float32, imagenet_eval_before: resize 256 + center crop 224.
The pipelines are timed INTERLEAVED: each round times every pipeline once, in turn (the order
reversed every other round), each on a fresh iterator (its first batch, the start-up, untimed;
then `--batches` batches), so the paired ratios compare pipelines under the same machine load.

device_data_cifar: `DeviceData` batches (50,000 CIFAR-sized uint8 images held on the devices,
crop + flip + normalize in one jitted call). coco_detection_train: `detection.data`'s train
loader (Pillow decode, multi-scale resize, flip, normalize, pad) on COCO-sized JPEGs (640 x
480 mosaics of the same photos, 8 boxes each), padded to the config's aspect-ratio buckets;
coco_detection_train_before: the same loader padding every batch to 1344 x 1344.

`time_data(args, root=...)` is what `benchmarks/step.py --data` calls (a shorter run).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import statistics
import sys
import tarfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARCHIVE = ROOT.parent / "shared" / "data" / "tiny-imagenet-200-mini.tar.gz"
NUM_TILES = 6144  # The first 6,144 train JPEGs of the archive, in archive order.
TILE = 64
MOSAIC = (8, 6)  # Tiles across, down.
IMAGENET_LIKE_SIZE = (500, 375)  # Width, height.
COCO_LIKE_SIZE = (640, 480)
QUALITY = 90


def read_tiles(archive: pathlib.Path = ARCHIVE, count: int = NUM_TILES) -> np.ndarray:
    """The first `count` train JPEGs of the Tiny-ImageNet archive, decoded: (count, 64, 64, 3)."""
    from PIL import Image

    tiles = []
    with tarfile.open(archive) as tar:
        for info in tar:
            if info.isfile() and "/train/" in info.name and info.name.endswith(".JPEG"):
                with Image.open(io.BytesIO(tar.extractfile(info).read())) as image:
                    tiles.append(np.asarray(image.convert("RGB")))
                if len(tiles) == count:
                    break
    if len(tiles) < count:
        raise ValueError(f"{archive}: {len(tiles)} train JPEGs, fewer than {count}")
    return np.stack(tiles)


def mosaics(tiles: np.ndarray, count: int, *, size=IMAGENET_LIKE_SIZE, grid=MOSAIC) -> list[bytes]:
    """`count` JPEGs (quality 90) of `grid` tiles each, chosen without replacement per mosaic by
    one `numpy.random.default_rng(0)`, placed row-major, cropped to `size` (width, height)."""
    from PIL import Image

    across, down = grid
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        chosen = tiles[rng.choice(len(tiles), across * down, replace=False)]
        rows = chosen.reshape(down, across, TILE, TILE, 3).transpose(0, 2, 1, 3, 4)
        pixels = rows.reshape(down * TILE, across * TILE, 3)[: size[1], : size[0]]
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="JPEG", quality=QUALITY)
        out.append(buffer.getvalue())
    return out


def imagenet_like_jpegs(archive: pathlib.Path = ARCHIVE, count: int = 1024) -> list[bytes]:
    """DESIGN.md section 9's ImageNet-like JPEGs: 500 x 375 mosaics of 8 x 6 Tiny-ImageNet
    photos (the first 6,144 train JPEGs), quality 90, about 88 KiB each."""
    return mosaics(read_tiles(archive), count)


def cores() -> int:
    return len(os.sched_getaffinity(0))


def _jpeg_source(jpegs: list[bytes]):
    """An ImageNet-like `sources.Source` over in-memory JPEGs (train split = eval split)."""
    import tensorflow as tf

    from luminet_jax.data import augment, sources

    n = len(jpegs)
    labels = np.arange(n, dtype=np.int64) % 1000

    def read(split, process_index, process_count, drop_remainder):
        images = tf.constant(jpegs, dtype=tf.string, shape=[n])
        return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels}), n, True

    info = sources.DatasetInfo(
        1000, n, n, 224, augment.IMAGENET_MEAN, augment.IMAGENET_STD, "train", "validation"
    )
    return sources.Source(info, read, "imagenet", None, imagenet_eval=True)


def imagenet_pipelines(jpegs: list[bytes], batch: int, seed: int = 0) -> dict:
    """name -> tf.data dataset (endless) of the ImageNet train/eval pipelines, new and before."""
    from luminet_jax.data import input_pipeline as ip

    source = _jpeg_source(jpegs)

    def train(**kw):
        return ip._train_dataset(source, name="imagenet_like", global_batch=batch, seed=seed, **kw)

    def evaluate(**kw):
        return ip._eval_dataset(source, global_batch=batch, **kw).repeat()

    return {
        "imagenet_train": train(output="uint8"),
        "imagenet_train_float32": train(output="float32"),
        "imagenet_train_before": train(legacy=True),
        "imagenet_eval": evaluate(output="uint8"),
        "imagenet_eval_float32": evaluate(output="float32"),
        "imagenet_eval_before": evaluate(legacy=True),
    }


def _time_rounds(makers: dict, *, batch: int, batches: int, rounds: int) -> dict[str, list]:
    """Per pipeline and round: (images per second, images per CPU-second of this process).

    `makers[name]()` -> a fresh iterator of batches. CPU time (all threads of this process)
    counts the work itself; on a machine shared with other processes it is far less inflated
    than wall time, so it is reported beside it.
    """
    rates = {name: [] for name in makers}
    for r in range(rounds):
        order = list(makers) if r % 2 == 0 else list(makers)[::-1]  # ABBA: drift cancels out
        for name in order:
            make = makers[name]
            iterator = make()
            next(iterator)  # Start-up (threads, first fill) untimed.
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(batches):
                next(iterator)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            rates[name].append((batch * batches / wall, batch * batches / cpu))
            del iterator  # Stops its background threads before the next pipeline runs.
    return rates


def _entries(rates: dict[str, list], *, batch: int, load: list) -> list[dict]:
    n = cores()
    out = []
    for name, values in rates.items():
        wall = statistics.median(v[0] for v in values)
        entry = dict(
            pipeline=name,
            images_per_s=round(wall, 1),
            images_per_s_per_core=round(wall / n, 1),
            cores=n,
            images_per_cpu_s=round(statistics.median(v[1] for v in values), 1),
            median_of_rounds=len(values),
            batch=batch,
            load_avg=load,
        )
        base = name.rsplit("_float32", 1)[0] + "_before" if "_before" not in name else None
        if base in rates:
            for key, k in (("ratio_to_before", 0), ("cpu_ratio_to_before", 1)):
                ratios = [a[k] / b[k] for a, b in zip(values, rates[base])]
                entry[key] = round(statistics.median(ratios), 3)
                entry[key + "_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
        out.append(entry)
    return out


def bench_imagenet(args) -> list[dict]:
    archive = pathlib.Path(args.archive)
    if not archive.exists():
        print(f"[data] skipping ImageNet pipelines: {archive} is absent")
        return []
    from luminet_jax.data import input_pipeline as ip

    jpegs = imagenet_like_jpegs(archive, args.images)
    print(f"[data] {len(jpegs)} ImageNet-like JPEGs, {np.mean([len(j) for j in jpegs]) / 1024:.1f} "
          f"KiB on average")  # fmt: skip
    datasets = imagenet_pipelines(jpegs, args.batch)
    wanted = [p for p in datasets if any(p.startswith(w) for w in args.imagenet)]
    makers = {name: (lambda ds=datasets[name]: ip._numpy_iter(ds)) for name in wanted}
    load = [round(x, 2) for x in os.getloadavg()]
    rates = _time_rounds(makers, batch=args.batch, batches=args.batches, rounds=args.rounds)
    load = [load, [round(x, 2) for x in os.getloadavg()]]
    return _entries(rates, batch=args.batch, load=load)


def bench_device_data(args) -> list[dict]:
    import jax

    from luminet_jax import sharding
    from luminet_jax.data import device_data

    mesh = sharding.make_mesh(jax.devices()[: args.devices])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8)  # A CIFAR-sized split.
    labels = rng.integers(0, 100, 50_000).astype(np.int32)
    batch = 64 * args.devices
    data = device_data.DeviceData(
        images, labels, mesh=mesh, global_batch=batch, seed=0, mean=(0.5,) * 3, std=(0.25,) * 3
    )
    jax.block_until_ready(data.batch(0))
    steps = 200
    rates = []
    for r in range(args.rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        for step in range(1 + r * steps, 1 + (r + 1) * steps):
            jax.block_until_ready(data.batch(step))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rates.append((batch * steps / wall, batch * steps / cpu))
    load = [round(x, 2) for x in os.getloadavg()]
    return _entries({"device_data_cifar": rates}, batch=batch, load=load)


def _coco_like_split(tiles: np.ndarray, count: int):
    """A detection `Split` of 640 x 480 JPEG mosaics (in memory), 8 boxes (tiles) each."""
    from luminet_jax.detection import sources as det_sources

    jpegs = mosaics(tiles, count, size=COCO_LIKE_SIZE, grid=(10, 8))
    rng = np.random.default_rng(1)
    records = []
    for i in range(count):
        cells = rng.choice(70, 8, replace=False)  # Whole tiles inside 640 x 448.
        xy = np.stack([cells % 10, cells // 10], 1).astype(np.float32) * TILE
        boxes = np.concatenate([xy, xy + TILE], 1)
        classes = np.zeros(8, np.int32)
        records.append(det_sources.Record(i + 1, f"{i}.jpg", 480, 640, boxes, classes))

    def example(i):
        return records[i], det_sources.decode(jpegs[i])

    return det_sources.Split(count, example, lambda: {}, records)


def bench_coco(args) -> list[dict]:
    archive = pathlib.Path(args.archive)
    if not archive.exists():
        print(f"[data] skipping the COCO detection loader: {archive} is absent")
        return []
    from luminet_jax import config_lib
    from luminet_jax.detection import data as det_data

    split = _coco_like_split(read_tiles(archive), 64)
    ds = config_lib.detection().dataset
    batch, batches = 8, 6

    def loader(pad_sizes):
        return lambda: det_data.make_train_iter(
            split,
            global_batch=batch,
            seed=0,
            pad_size=tuple(ds.pad_size),
            pad_sizes=pad_sizes,
            max_gt=ds.max_gt,
            short_sides=tuple(ds.short_sides),
            max_size=ds.max_size,
            num_workers=cores(),
            process_index=0,
            process_count=1,
        )

    load = [round(x, 2) for x in os.getloadavg()]
    pipelines = {  # the config's aspect-ratio buckets, and every batch padded square (before)
        "coco_detection_train": loader(tuple(tuple(p) for p in ds.pad_sizes)),
        "coco_detection_train_before": loader(()),
    }
    rates = _time_rounds(pipelines, batch=batch, batches=batches, rounds=min(args.rounds, 8))
    return _entries(rates, batch=batch, load=load)


def time_data(args, *, root: pathlib.Path = ROOT) -> list[dict]:
    """`benchmarks/step.py --data`: device-resident CIFAR and the ImageNet train pipelines."""
    bench = argparse.Namespace(
        archive=str(root.parent / "shared" / "data" / ARCHIVE.name),
        images=256,
        batch=args.batch,
        batches=max(1, args.data_batches // 4),
        rounds=2,
        devices=args.devices,
        imagenet=("imagenet_train",),
    )
    return bench_device_data(bench) + bench_imagenet(bench)


BENCHES = {"imagenet": bench_imagenet, "device_data": bench_device_data, "coco": bench_coco}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="write the JSON list here")
    p.add_argument("--pipelines", default="imagenet,device_data,coco", help=", ".join(BENCHES))
    p.add_argument("--imagenet", default="imagenet_train,imagenet_eval",
                   help="ImageNet pipelines (name prefixes)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds (median reported)")
    p.add_argument("--batch", type=int, default=64, help="ImageNet batch")
    p.add_argument("--batches", type=int, default=4, help="timed ImageNet batches per round")
    p.add_argument("--images", type=int, default=1024, help="ImageNet-like JPEGs")
    p.add_argument("--devices", type=int, default=1, help="devices for device_data")
    p.add_argument("--archive", default=str(ARCHIVE))
    args = p.parse_args(argv)
    args.imagenet = tuple(args.imagenet.split(","))
    print(f"[data] cores {cores()}, load average {os.getloadavg()}")
    results = []
    for name in args.pipelines.split(","):
        results += BENCHES[name](args)
    for r in results:
        ratio = (
            f"  x{r['ratio_to_before']:.2f} (CPU time x{r['cpu_ratio_to_before']:.2f}) vs before"
            if "ratio_to_before" in r
            else ""
        )
        print(f"[data] {r['pipeline']:24s} {r['images_per_s']:9.1f} images/s "
              f"{r['images_per_s_per_core']:8.1f} per core {r['images_per_cpu_s']:8.1f} per "
              f"CPU-s{ratio}")  # fmt: skip
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
