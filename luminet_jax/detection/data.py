"""Detection batches: `sources.Split`s -> static-shape numpy batches (host side, no tf.data).

Batches (`make_train_iter` / `make_eval_iter`, process-local, `global_batch // process_count`):
  image (B, H, W, 3) float32, normalized ((pixel - mean) / std) and zero-padded to a fixed
  size (multiples of 32): `pad_size`, or in training one of `pad_sizes` (aspect-ratio buckets,
  see `make_train_iter`); boxes (B, G, 4) float32 x1y1x2y2 in padded-image pixels; classes
  (B, G) int32; gt_mask (B, G) bool (padding False; padded boxes and classes are 0); image_id
  (B,) int32 (jax's default width; COCO ids fit); scale (B,) float32 (original pixels =
  padded-image pixels / scale); image_size (B, 2) int32 valid (h, w); index (B,) int32, the
  image's position in the split (unique over processes, as the classification batches'
  "index"); eval batches add mask (B,) float32 (0 for padding images, whose image_id and index
  are -1).
Train: multi-scale short side (detectron2's ResizeShortestEdge, "choice") + horizontal flip;
eval: fixed short side, no flip, padded to `pad_size`. Train batches are a pure function of
(seed, process, step), so `start_step=k` resumes with exactly the batches of an uninterrupted
run (as `data.input_pipeline.make_train_iter`), and every process pads step k's batch to the
same size (a function of (seed, step) only). Sources and dataset names: `detection.sources`.
"""

import collections
import concurrent.futures
import functools
import math
from collections.abc import Iterator, Sequence

import numpy as np
from absl import logging
from PIL import Image

from luminet_jax.detection import buckets as buckets_lib
from luminet_jax.detection import sources

# torchvision's ImageNet statistics in 0..255 RGB (detectron2's R-18 configs); detectron2's MSRA
# R-50/101 weights instead take BGR with mean (103.530, 116.280, 123.675) and std 1.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
Record = sources.Record
Split = sources.Split
get_source = sources.get_source


def resize_scale(height: int, width: int, short_side: int, max_size: int) -> float:
    """detectron2's ResizeShortestEdge factor: short side -> `short_side`, long side <= max."""
    scale = short_side / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return scale


def transform(
    record: Record,
    image: np.ndarray,
    *,
    short_side: int,
    max_size: int,
    flip: bool,
    pad_size: tuple[int, int],
    max_gt: int,
    mean: Sequence[float] = PIXEL_MEAN,
    std: Sequence[float] = PIXEL_STD,
    bgr: bool = False,
    out: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """Resizes (bilinear, PIL as detectron2), optionally flips, normalizes and pads one image.

    `out`, if given, is a zeroed float32 (*pad_size, 3) buffer (a slot of the batch) that
    receives the image in place, which saves copying the padded image into the batch.

    Returns:
      (one example of the batch layout in the module docstring, number of boxes dropped
      beyond `max_gt`).
    """
    height, width = record.height, record.width
    scale = resize_scale(height, width, short_side, max_size)
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)  # detectron2's rounding.
    if new_h > pad_size[0] or new_w > pad_size[1]:
        raise ValueError(f"image {record.image_id}: resized to {(new_h, new_w)} > pad {pad_size}")
    if (new_h, new_w) != (height, width):
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    # Reference: detectron2 scales boxes by (new_w / w, new_h / h); one factor here, so that
    # dividing by `scale` maps detections back exactly (the two differ by < 0.5 pixel).
    boxes = record.boxes.astype(np.float32) * np.float32(scale)
    if flip:
        image = image[:, ::-1]
        boxes = np.stack([new_w - boxes[:, 2], boxes[:, 1], new_w - boxes[:, 0], boxes[:, 3]], 1)
    mean, std = np.float32(mean), np.float32(std)
    if bgr:
        image, mean, std = image[..., ::-1], mean[::-1], std[::-1]
    padded = np.zeros((*pad_size, 3), np.float32) if out is None else out
    target = padded[:new_h, :new_w]
    lut = (np.arange(256, dtype=np.float32)[:, None] - mean) / std  # (256, 3): 3x faster.
    for c in range(3):
        target[..., c] = lut[:, c][image[..., c]]
    count = min(len(boxes), max_gt)
    gt_boxes = np.zeros((max_gt, 4), np.float32)
    gt_boxes[:count] = boxes[:count]
    classes = np.zeros((max_gt,), np.int32)
    classes[:count] = record.classes[:count]
    example = {
        "image": padded,
        "boxes": gt_boxes,
        "classes": classes,
        "gt_mask": np.arange(max_gt) < count,
        "image_id": np.int32(record.image_id),
        "scale": np.float32(scale),
        "image_size": np.array([new_h, new_w], np.int32),
    }
    return example, len(boxes) - count


def _local_batch(global_batch: int, process_count: int) -> int:
    if global_batch <= 0 or global_batch % process_count:
        raise ValueError(f"global_batch={global_batch} must be a multiple of {process_count}")
    return global_batch // process_count


def _process(process_index, process_count):
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    return int(process_index), int(process_count)


def _check_pad(pad_size):
    pad_size = tuple(int(p) for p in pad_size)
    if len(pad_size) != 2 or any(p <= 0 or p % 32 for p in pad_size):
        raise ValueError(f"pad_size {pad_size} must be two positive multiples of 32")
    return pad_size


def _check_pads(pad_size, pad_sizes) -> list[tuple[int, int]]:
    """The train pad sizes: `pad_sizes` if given (each checked), else [pad_size]."""
    pads = [_check_pad(p) for p in (pad_sizes or [pad_size])]
    if len(set(pads)) != len(pads):
        raise ValueError(f"pad_sizes {pads} repeat a size")
    return pads


def _padding(pad_size, max_gt) -> dict[str, np.ndarray]:
    """An eval padding example (its image stays the zeros of the batch): no boxes, id -1, mask 0."""
    return {
        "boxes": np.zeros((max_gt, 4), np.float32),
        "classes": np.zeros((max_gt,), np.int32),
        "gt_mask": np.zeros((max_gt,), bool),
        "image_id": np.int32(-1),
        "scale": np.float32(1),
        "image_size": np.zeros((2,), np.int32),
        "index": np.int32(-1),
        "mask": np.float32(0),
    }


def _batches(plan, split: Split, prepare, padding, num_workers: int):
    """Yields stacked batches of `prepare(record, image, **keywords)` over each planned batch.

    `plan` yields (pad size, list of (example index, keywords)); index -1 is an eval padding
    example. Decoding, resizing and normalizing (into the batch's image array) run in a thread
    pool (PIL and numpy release the GIL), one batch ahead of the caller.
    """

    def load(item, out):
        if item[0] < 0:
            return padding, 0
        example, dropped = prepare(*split.example(item[0]), **item[1], out=out)
        example["index"] = np.int32(item[0])
        return (example if padding is None else dict(example, mask=np.float32(1))), dropped

    def collect(images, futures):
        nonlocal warned
        examples, dropped = zip(*[f.result() for f in futures])
        if sum(dropped) and not warned:
            warned = True
            logging.warning(
                "detection data: %d boxes beyond max_gt dropped in a batch (warned once)",
                sum(dropped),
            )
        batch = {k: np.stack([ex[k] for ex in examples]) for k in examples[0] if k != "image"}
        return {"image": images, **batch}

    warned = False
    with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
        pending = collections.deque()
        for pad_size, items in plan:
            images = np.zeros((len(items), *pad_size, 3), np.float32)  # Zero pages: cheap.
            pending.append((images, [pool.submit(load, x, y) for x, y in zip(items, images)]))
            if len(pending) > 1:
                yield collect(*pending.popleft())
        while pending:
            yield collect(*pending.popleft())


def _shard(n: int, process_index: int, process_count: int, drop_remainder: bool) -> range:
    """The process's contiguous slice of n examples (as the classification sources)."""
    base, extra = divmod(n, process_count)
    extra = 0 if drop_remainder else extra
    start = process_index * base + min(process_index, extra)
    return range(start, start + base + (process_index < extra))


def _train_indices(split: Split, filter_empty: bool) -> np.ndarray:
    if not filter_empty or split.records is None:
        # Reference: detectron2 drops train images without annotations; the TFDS source keeps
        # them (that needs a pass over the whole split), the targets are then all padding.
        return np.arange(split.size)
    return np.array([i for i, r in enumerate(split.records) if len(r.boxes)], np.int64)


def _train_buckets(split, indices, pads, short_sides, max_size) -> np.ndarray:
    """(len(indices),) bucket of each train image; all 0 (no sizes read) for <= 1 pad size."""
    if len(pads) <= 1:
        return np.zeros(len(indices), np.int64)
    sizes = buckets_lib.image_sizes(split)[indices]
    return buckets_lib.assign_buckets(sizes, pads, short_side=max(short_sides), max_size=max_size)


def _bucket_steps(buckets, num_buckets, local_batch, process_count) -> np.ndarray:
    shards = [_shard(len(buckets), p, process_count, True) for p in range(process_count)]
    return buckets_lib.steps_per_bucket(buckets, shards, num_buckets, local_batch)


def train_steps_per_epoch(
    split: Split,
    *,
    global_batch: int,
    process_count: int = 1,
    filter_empty: bool = True,
    pad_sizes: Sequence[tuple[int, int]] = (),
    short_sides: Sequence[int] = (),
    max_size: int = 0,
) -> int:
    """Batches per epoch of `make_train_iter` (each process drops its share's remainder; with
    several `pad_sizes`, each bucket's remainder; the arguments as `make_train_iter`'s)."""
    local_batch = _local_batch(global_batch, process_count)
    indices = _train_indices(split, filter_empty)
    pads = [_check_pad(p) for p in pad_sizes]
    buckets = _train_buckets(split, indices, pads, short_sides, max_size)
    return int(_bucket_steps(buckets, max(1, len(pads)), local_batch, process_count).sum())


def _train_shard(
    split, filter_empty, pads, short_sides, max_size, local_batch, process_index, process_count
):
    """(this process's train indices, the bucket of every example, steps per bucket)."""
    indices = _train_indices(split, filter_empty)
    buckets = _train_buckets(split, indices, pads, short_sides, max_size)
    bucket_steps = _bucket_steps(buckets, len(pads), local_batch, process_count)
    shard = _shard(len(indices), process_index, process_count, True)
    local = indices[shard.start : shard.stop]
    if bucket_steps.sum() == 0:
        raise ValueError(f"{len(local)} train images per process < local batch {local_batch}")
    unused = [pads[b] for b in range(len(pads)) if bucket_steps[b] == 0 and (buckets == b).any()]
    if unused:
        logging.warning("detection data: pad sizes %s get no steps (< a local batch)", unused)
    bucket_of = np.zeros(split.size, np.int64)
    bucket_of[indices] = buckets
    return local, bucket_of, bucket_steps


def make_train_iter(
    split: Split,
    *,
    global_batch: int,
    seed: int,
    pad_size: tuple[int, int],
    max_gt: int,
    short_sides: Sequence[int],
    max_size: int,
    flip: bool = True,
    start_step: int = 0,
    filter_empty: bool = True,
    mean: Sequence[float] = PIXEL_MEAN,
    std: Sequence[float] = PIXEL_STD,
    bgr: bool = False,
    num_workers: int = 4,
    process_index: int | None = None,
    process_count: int | None = None,
    pad_sizes: Sequence[tuple[int, int]] = (),
) -> Iterator[dict[str, np.ndarray]]:
    """Endless iterator of process-local train batches, a pure function of (seed, step).

    Each epoch shuffles the process's shard with a seed from (seed, process, epoch); each
    example's short side (uniform choice from `short_sides`, detectron2's "choice" style) and
    flip (probability 1/2) come from (seed, process, step). Batches never straddle epochs.

    Aspect-ratio buckets (`pad_sizes`, `detection.buckets`): each image belongs to the
    smallest pad size that holds it at the largest short side, a batch to one bucket. Bucket
    b gets S_b steps per epoch, the fewest whole local batches of its images over the
    processes' shards, in an order drawn from (seed, epoch) only (every process pads step k
    alike); the r-th step of bucket b takes the r-th local batch of the process's shuffled
    shard restricted to b (< local_batch images per bucket and process left out of each
    epoch, a different few every epoch). With one pad size this is the plain shuffle.

    Args:
      split: the train `Split` (`source.splits[source.train_split]()`).
      global_batch: images over all processes; each yields global_batch // process_count.
      seed: the run's seed.
      pad_size: fixed (H, W) of every batch, multiples of 32 (>= max_size for any aspect),
        unless `pad_sizes` are given.
      max_gt: G, ground-truth slots per image; further boxes are dropped with a warning.
      short_sides: candidate short-side lengths (detectron2: 640, 672, ..., 800).
      max_size: longest side after resizing (detectron2: 1333).
      flip: random horizontal flip.
      start_step: batches already consumed: the first batch yielded is batch `start_step`.
      filter_empty: drop images without (non-crowd) boxes, as detectron2.
      mean, std: normalization in 0..255 RGB; bgr: emit channels in BGR order.
      num_workers: decoding threads.
      process_index, process_count: this process's shard; default jax's.
      pad_sizes: the buckets' (H, W), multiples of 32, in place of `pad_size`; several need
        the images' sizes up front (`buckets.image_sizes`).
    """
    process_index, process_count = _process(process_index, process_count)
    pads = _check_pads(pad_size, pad_sizes)
    local_batch = _local_batch(global_batch, process_count)
    local, bucket_of, bucket_steps = _train_shard(
        split, filter_empty, pads, short_sides, max_size, local_batch, process_index, process_count
    )
    sides = np.asarray(short_sides, np.int64)
    plan = buckets_lib.train_plan(
        local,
        bucket_of,
        bucket_steps,
        pads,
        local_batch,
        short_sides=sides,
        flip=flip,
        seed=seed,
        process_index=process_index,
        start_step=start_step,
    )
    prepare = functools.partial(
        transform, max_size=max_size, max_gt=max_gt, mean=mean, std=std, bgr=bgr
    )
    return _batches(plan, split, prepare, None, num_workers)


def make_eval_iter(
    split: Split,
    *,
    global_batch: int,
    pad_size: tuple[int, int],
    max_gt: int,
    short_side: int,
    max_size: int,
    mean: Sequence[float] = PIXEL_MEAN,
    std: Sequence[float] = PIXEL_STD,
    bgr: bool = False,
    num_workers: int = 4,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over the eval split: fixed short side, no flip, every image exactly once.

    All processes yield ceil(ceil(N / processes) / local batch) batches; the last ones are
    padded with images whose "mask" is 0 and "image_id" -1. Arguments as `make_train_iter`.
    """
    process_index, process_count = _process(process_index, process_count)
    pad_size = _check_pad(pad_size)
    local_batch = _local_batch(global_batch, process_count)
    local = list(_shard(split.size, process_index, process_count, False))
    per_process = math.ceil(split.size / process_count)
    num_batches = math.ceil(per_process / local_batch)
    local += [-1] * (num_batches * local_batch - len(local))
    plan = (
        (pad_size, [(i, {}) for i in local[b * local_batch : (b + 1) * local_batch]])
        for b in range(num_batches)
    )
    prepare = functools.partial(
        transform,
        short_side=short_side,
        max_size=max_size,
        flip=False,
        pad_size=pad_size,
        max_gt=max_gt,
        mean=mean,
        std=std,
        bgr=bgr,
    )
    return _batches(plan, split, prepare, _padding(pad_size, max_gt), num_workers)
