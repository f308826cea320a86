"""Aspect-ratio buckets of the detection train batches (`detection.data.make_train_iter`).

A bucket is a fixed pad size (H, W), multiples of 32; each train image belongs to the smallest
one that holds it at the largest train short side, and every batch holds images of one bucket
only, so the train step compiles once per bucket instead of padding every image to one square
(COCO: 800 x 1088 / 800 x 1344 and their portraits instead of 1344 x 1344, about 1.8x fewer
FLOPs per step, benchmarks/detection_flops.py). Each epoch's order of buckets is drawn from
(seed, epoch) alone, so every process pads step k alike.
"""

from collections.abc import Sequence

import numpy as np

from luminet_jax.detection import records

# The tag in the seed of an epoch's bucket schedule, which must not depend on the process
# (`data`'s shuffles are seeded by [seed, process, epoch]; no process has this index).
_SCHEDULE_TAG = 2**31 - 1


def image_sizes(split: records.Split) -> np.ndarray:
    """(split.size, 2) int64 (height, width) of every image: from the records, else from
    `split.sizes()` (a pass over the images, e.g. TFDS)."""
    if split.records is not None:
        return np.array([(r.height, r.width) for r in split.records], np.int64).reshape(-1, 2)
    if split.sizes is None:
        raise ValueError("this split knows neither its records nor its image sizes")
    return np.asarray(split.sizes(), np.int64).reshape(-1, 2)


def assign_buckets(
    sizes: np.ndarray, pad_sizes: Sequence[tuple[int, int]], *, short_side: int, max_size: int
) -> np.ndarray:
    """Each image's bucket: the smallest-area pad size (first listed among equal areas) that
    holds the image resized with `short_side` (the largest training short side) and `max_size`
    (`data.resize_scale` and `data.transform`'s rounding, vectorized).

    Args:
      sizes: (N, 2) original (height, width).
      pad_sizes: the buckets' (H, W).
      short_side, max_size: as `data.resize_scale`.

    Returns:
      (N,) int64 indices into `pad_sizes`.

    Raises:
      ValueError: an image fits no pad size.
    """
    sizes = np.asarray(sizes, np.float64).reshape(-1, 2)
    short, long = sizes.min(1), sizes.max(1)
    scale = short_side / short  # the same float64 arithmetic as data.resize_scale
    scale = np.where(long * scale > max_size, max_size / long, scale)
    resized = (sizes * scale[:, None] + 0.5).astype(np.int64)  # detectron2's rounding
    pads = np.asarray(pad_sizes, np.int64).reshape(-1, 2)
    fits = (resized[:, None, :] <= pads[None]).all(-1)  # (N, buckets)
    if len(sizes) and not fits.any(1).all():
        i = int(np.flatnonzero(~fits.any(1))[0])
        raise ValueError(
            f"image {i} ({sizes[i].astype(int).tolist()} -> {resized[i].tolist()}) fits none "
            f"of the pad sizes {pads.tolist()}"
        )
    by_area = np.argsort(pads.prod(1), kind="stable")
    return by_area[fits[:, by_area].argmax(1)]


def steps_per_bucket(
    buckets: np.ndarray, shards: Sequence[range], num_buckets: int, local_batch: int
) -> np.ndarray:
    """(num_buckets,) steps per epoch of each bucket: the fewest whole local batches of its
    images over the processes' `shards` (slices of `buckets`), as every process takes them."""
    counts = [np.bincount(buckets[s.start : s.stop], minlength=num_buckets) for s in shards]
    return np.min(counts, axis=0) // local_batch


def epoch_schedule(steps: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The bucket of each step of `epoch`: a shuffle of steps[b] copies of each bucket b, from
    (seed, epoch) only (so the same on every process); in order for a single bucket."""
    schedule = np.repeat(np.arange(len(steps)), steps)
    # Reference: detectron2's AspectRatioGroupedDataset groups images on the fly by w > h and
    # yields a group once it holds a batch (padded to that batch's own maximum size); here the
    # groups are fixed sizes (static shapes: one compilation each) and the order of the groups
    # is drawn ahead, so a batch stays a function of (seed, process, step), resumable, and all
    # processes pad step k alike.
    if len(steps) > 1:
        schedule = np.random.default_rng([seed, _SCHEDULE_TAG, epoch]).permutation(schedule)
    return schedule


def train_plan(
    local,
    bucket_of,
    bucket_steps,
    pads,
    local_batch,
    *,
    short_sides,
    flip,
    seed,
    process_index,
    start_step,
):
    """`data.make_train_iter`'s batches from `start_step` on: (pad size, [(example index,
    {short_side, flip, pad_size}), ...]), a pure function of (seed, process, step).

    `local`: the process's example indices; `bucket_of`: every example's bucket;
    `bucket_steps`: steps per bucket and epoch (`steps_per_bucket`); `pads`: the buckets'
    sizes; `short_sides`: the candidate short sides (array)."""
    steps_per_epoch = int(bucket_steps.sum())
    step, epoch = int(start_step), None
    while True:
        if step // steps_per_epoch != epoch:
            epoch = step // steps_per_epoch
            order = np.random.default_rng([seed, process_index, epoch]).permutation(local)
            by_bucket = [order[bucket_of[order] == b] for b in range(len(pads))]
            schedule = epoch_schedule(bucket_steps, seed, epoch)
        k = step - epoch * steps_per_epoch
        bucket = schedule[k]
        r = int(np.count_nonzero(schedule[:k] == bucket))  # the bucket's r-th step
        chosen = by_bucket[bucket][r * local_batch : (r + 1) * local_batch]
        rng = np.random.default_rng([seed, process_index, epoch, k, 1])
        shorts = rng.choice(short_sides, local_batch)
        flips = rng.random(local_batch) < 0.5 if flip else np.zeros(local_batch, bool)
        pad = pads[bucket]
        keywords = [
            dict(short_side=s, flip=f, pad_size=pad)
            for s, f in zip(shorts.tolist(), flips.tolist())
        ]
        yield pad, list(zip(chosen.tolist(), keywords))
        step += 1
