"""Input pipeline: TFDS (or local files) -> tf.data -> process-local numpy batches.

Imported lazily by `train.py` (it imports TensorFlow, and hides the GPUs from it).

Train batches are a pure function of (seed, step): each epoch is shuffled with a seed derived
from (seed, epoch, process) and every example is augmented with a stateless seed derived from
(seed, process, epoch, position in the epoch). `make_train_iter(start_step=k)` therefore yields
exactly the batches k, k+1, ... of an uninterrupted run, skipping the consumed examples before
decoding or augmenting them. Batches never straddle epochs (the per-epoch remainder is dropped,
as PyTorch's `drop_last=True`), so `steps_per_epoch = examples_per_process // local_batch`.

Batch images are float32, normalized on the host (the default), or the same pixels as uint8
(`output="uint8"`: a quarter of the bytes, for a step that normalizes on the accelerator with
`data.normalize.normalize`). ImageNet-style paths read each JPEG's header, draw the crop, and
decode only the part the output needs (`augment.imagenet_train_uint8` / `imagenet_eval_uint8`).

Dataset names (`KNOWN_DATASETS`): cifar10, cifar100, imagenet2012 (TFDS); tiny_imagenet (the
project TFDS builder over the tiny-imagenet-200 zip/folder); cifar100_local
(cifar-100-python.tar.gz); image_folder:<path> (folder or tar of split/class/image);
cifar10_sample (the 4,000-JPEG sample shipped in assets/).
"""

import math
from collections.abc import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from luminet_jax.data import augment as augment_lib
from luminet_jax.data import autoaugment, sources

try:  # TF must not reserve accelerator memory that JAX needs.
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # Devices were already initialised by an earlier import.
    pass

DatasetInfo = sources.DatasetInfo
KNOWN_DATASETS = sources.KNOWN_DATASETS
AUGMENTS = ("cifar", "imagenet", "none", "autoaugment")
OUTPUTS = ("float32", "uint8")  # Batch images: normalized on the host, or pixels as they are.
CACHE_LIMIT_BYTES = 4 << 30  # Cache decoded pixels when the process's split is below this.
STREAM_SHUFFLE_BUFFER = 16_384  # Shuffle buffer for splits too large to cache.


def dataset_info(name: str, data_dir: str | None = None) -> DatasetInfo:
    """Returns the `DatasetInfo` of a dataset (prepares tiny_imagenet on first use).

    Args:
      name: one of `KNOWN_DATASETS`.
      data_dir: TFDS data dir, or the folder holding the local archive; None for the default.
    """
    return sources.get_source(name, data_dir).info


def train_steps_per_epoch(name: str, *, global_batch: int, data_dir: str | None = None) -> int:
    """Batches per epoch of `make_train_iter`: (num_train // processes) // local batch.

    Equals `num_train // global_batch` with one process; with several, each process drops the
    remainder of its own even share, which can make it one step less.
    """
    count = jax.process_count()
    return (dataset_info(name, data_dir).num_train // count) // _local_batch(global_batch)


def _decode(image: tf.Tensor) -> tf.Tensor:
    image = tf.io.decode_image(image, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def _pixels(image, seed, *, source: sources.Source, mode: str, size: int, encoded: bool):
    """One example -> uint8 (size, size, 3); `mode` is an augment name or "eval".

    `image` is the encoded bytes when `encoded` (ImageNet-style paths read JPEGs partially),
    else uint8 pixels.
    """
    if mode == "imagenet":
        return augment_lib.imagenet_train_uint8(image, seed, size=size, encoded=encoded)
    if source.imagenet_eval and mode in ("eval", "none"):
        return augment_lib.imagenet_eval_uint8(image, size=size, encoded=encoded)
    if encoded:
        image = _decode(image)
    if source.native_size != size:
        image = tf.cast(tf.round(augment_lib.resize_to(image, size)), tf.uint8)
    if mode in ("cifar", "autoaugment"):
        crop_seed, policy_seed = augment_lib.split_seed(seed, 2)
        image = augment_lib.cifar_train(image, crop_seed, padding=4)
        if mode == "autoaugment":
            image = autoaugment.cifar10_policy(image, policy_seed)
    return tf.ensure_shape(image, [size, size, 3])


def _legacy_preprocess(image, seed, *, source: sources.Source, mode: str, size: int, encoded: bool):
    """The preprocessing before issue 21 (whole decode, float resize, host normalization).

    Kept only for `benchmarks/data_bench.py`, which times it beside `_pixels` in one process.
    """
    if encoded:
        image = _decode(image)
    info = source.info
    if mode == "imagenet":
        image = augment_lib.imagenet_train(image, seed, size=size)
    elif source.imagenet_eval and mode in ("eval", "none"):
        image = augment_lib.imagenet_eval(image, size=size)
    else:
        image = _pixels(image, seed, source=source, mode=mode, size=size, encoded=False)
    # augment.normalize as it was (the same values; a broadcast 5x slower than today's).
    image = tf.cast(image, tf.float32) / 255.0
    image = (image - tf.constant(info.mean, tf.float32)) / tf.constant(info.std, tf.float32)
    return tf.ensure_shape(image, [size, size, 3])


def _output(image: tf.Tensor, info: DatasetInfo, output: str) -> tf.Tensor:
    """uint8 pixels as they are, or float32 normalized on the host.

    The float32 values equal `normalize.normalize` of the uint8 ones on the accelerator, to
    float32 rounding.
    """
    if output == "uint8":
        return image
    return augment_lib.normalize(image, info.mean, info.std)


def _check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"Unknown output {output!r}; known: {OUTPUTS}")


def _base(source: sources.Source, split: str, *, drop_remainder: bool):
    """The process's examples: (dataset, count, cached, still encoded).

    Small splits are decoded once and cached as uint8 pixels; large ones stay encoded (so
    shuffle buffers hold compressed bytes) and are decoded per example after the shuffle.
    """
    ds, n_local, encoded = source.read(
        split, jax.process_index(), jax.process_count(), drop_remainder
    )
    size = source.native_size
    small = size is not None and n_local * size * size * 3 <= CACHE_LIMIT_BYTES
    if not small:
        return ds, n_local, False, encoded
    if encoded:
        ds = ds.map(
            lambda ex: {"image": _decode(ex["image"]), "label": ex["label"]},
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return ds.cache(), n_local, True, False


def _local_batch(global_batch: int) -> int:
    count = jax.process_count()
    if global_batch <= 0 or global_batch % count:
        raise ValueError(
            f"global_batch={global_batch} must be a positive multiple of the process count {count}"
        )
    return global_batch // count


def _numpy_iter(ds) -> Iterator[dict[str, np.ndarray]]:
    options = tf.data.Options()
    options.deterministic = True
    return iter(tfds.as_numpy(ds.with_options(options)))


def make_train_iter(
    name: str,
    *,
    global_batch: int,
    seed: int,
    data_dir: str | None = None,
    start_step: int = 0,
    augment: str | None = None,
    image_size: int | None = None,
    shuffle_buffer: int | None = None,
    output: str = "float32",
) -> Iterator[dict[str, np.ndarray]]:
    """Endless iterator of process-local train batches, deterministic in (seed, step).

    Args:
      name: dataset name (`KNOWN_DATASETS`).
      global_batch: batch over all processes; each yields `global_batch // process_count`.
      seed: the run's seed.
      data_dir: TFDS data dir / folder of the local archive.
      start_step: number of batches already consumed (resume): the first batch yielded is
        batch `start_step` of an uninterrupted run.
      augment: "cifar" (pad 4 + crop + flip), "imagenet" (RandomResizedCrop + flip), "none",
        "autoaugment" (cifar + AutoAugment CIFAR-10 policy); None picks the dataset's default.
      image_size: output size; default the dataset's (32 CIFAR, 64 Tiny-ImageNet, 224 ImageNet).
      shuffle_buffer: default the whole split when it is cached, else STREAM_SHUFFLE_BUFFER.
      output: "float32" (normalized with the dataset's mean and std on the host) or "uint8"
        (the same pixels before normalization, a quarter of the bytes, for a step that
        normalizes on the accelerator with `normalize.normalize`). The float32 batch is
        exactly the host normalization of the uint8 one.

    Returns:
      Iterator of {"image": float32 (B, S, S, 3) normalized or uint8 (B, S, S, 3),
      "label": int32 (B,), "index": int32 (B,)}: `index` numbers the training examples
      0..N-1 over all processes (position in the process's share * process count + process
      index).
    """
    source = sources.get_source(name, data_dir)
    ds = _train_dataset(
        source,
        name=name,
        global_batch=global_batch,
        seed=seed,
        start_step=start_step,
        augment=augment,
        image_size=image_size,
        shuffle_buffer=shuffle_buffer,
        output=output,
    )
    return _numpy_iter(ds)


def _train_dataset(
    source: sources.Source,
    *,
    name: str = "dataset",
    global_batch: int,
    seed: int,
    start_step: int = 0,
    augment: str | None = None,
    image_size: int | None = None,
    shuffle_buffer: int | None = None,
    output: str = "float32",
    legacy: bool = False,
) -> tf.data.Dataset:
    """`make_train_iter`'s tf.data pipeline over a source (`legacy`: `_legacy_preprocess`)."""
    mode = augment or source.default_augment
    if mode not in AUGMENTS:
        raise ValueError(f"Unknown augment {mode!r}; known: {AUGMENTS}")
    _check_output(output)
    size = image_size or source.info.image_size
    local_batch = _local_batch(global_batch)
    base, n_local, cached, encoded = _base(source, source.info.train_split, drop_remainder=True)
    # Reference: mdistiller's DataLoader keeps the last partial batch (drop_last=False); static
    # shapes under jit drop it here (781 instead of 782 steps per CIFAR epoch at batch 64).
    steps_per_epoch = n_local // local_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{name}: {n_local} examples per process < local batch {local_batch}")
    buffer = shuffle_buffer or (n_local if cached else min(n_local, STREAM_SHUFFLE_BUFFER))
    start_epoch, skip_batches = divmod(int(start_step), steps_per_epoch)
    process, count = jax.process_index(), jax.process_count()
    seed = int(seed)
    # Each example's index in the whole split, unique over processes (CRD's memories):
    # position within this process's share times the process count, plus the process.
    base = base.enumerate().map(
        lambda j, ex: {**ex, "index": tf.cast(j * count + process, tf.int32)}
    )

    def epoch_examples(epoch):
        shuffle_seed = (seed * 1_000_003 + process) * 65_537 + epoch
        ds = base.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
        ds = ds.enumerate().take(steps_per_epoch * local_batch)
        first = tf.constant(skip_batches * local_batch, tf.int64)
        skip = tf.where(epoch == start_epoch, first, tf.constant(0, tf.int64))
        return ds.skip(skip).map(lambda i, ex: (epoch * n_local + i, ex))

    def prepare(position, ex):
        example_seed = tf.stack([tf.constant(seed, tf.int64) * 4096 + process, position])
        kwargs = dict(source=source, mode=mode, size=size, encoded=encoded)
        if legacy:
            image = _legacy_preprocess(ex["image"], example_seed, **kwargs)
        else:
            image = _output(_pixels(ex["image"], example_seed, **kwargs), source.info, output)
        return {"image": image, "label": tf.cast(ex["label"], tf.int32), "index": ex["index"]}

    ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_examples)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def make_eval_iter(
    name: str,
    *,
    global_batch: int,
    data_dir: str | None = None,
    image_size: int | None = None,
    output: str = "float32",
) -> Iterator[dict[str, np.ndarray]]:
    """Iterator over the eval split in which every example appears exactly once.

    All processes yield the same number of batches; the last ones are padded with zero images
    whose "mask" is 0 (real examples have mask 1). `output` as in `make_train_iter` (the
    padding is zeros in either).

    Returns:
      Iterator of {"image": float32 or uint8 (B, S, S, 3), "label": int32 (B,),
      "mask": float32 (B,)}.
    """
    source = sources.get_source(name, data_dir)
    ds = _eval_dataset(source, global_batch=global_batch, image_size=image_size, output=output)
    return _numpy_iter(ds)


def _eval_dataset(
    source: sources.Source,
    *,
    global_batch: int,
    image_size: int | None = None,
    output: str = "float32",
    legacy: bool = False,
) -> tf.data.Dataset:
    """`make_eval_iter`'s tf.data pipeline over a source (`legacy`: `_legacy_preprocess`)."""
    _check_output(output)
    size = image_size or source.info.image_size
    local_batch = _local_batch(global_batch)
    base, _, _, encoded = _base(source, source.info.eval_split, drop_remainder=False)
    per_process = math.ceil(source.info.num_eval / jax.process_count())
    num_batches = math.ceil(per_process / local_batch)
    dtype = tf.float32 if legacy or output == "float32" else tf.uint8

    def prepare(ex):
        kwargs = dict(source=source, mode="eval", size=size, encoded=encoded)
        if legacy:
            image = _legacy_preprocess(ex["image"], None, **kwargs)
        else:
            image = _output(_pixels(ex["image"], None, **kwargs), source.info, output)
        return {"image": image, "label": tf.cast(ex["label"], tf.int32), "mask": 1.0}

    padding = tf.data.Dataset.from_tensors(
        {"image": tf.zeros([size, size, 3], dtype), "label": 0, "mask": 0.0}
    ).repeat()
    ds = base.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).concatenate(padding)
    return ds.take(num_batches * local_batch).batch(local_batch).prefetch(tf.data.AUTOTUNE)


load_arrays = sources.load_arrays  # whole splits as uint8 arrays (device-resident data)


def train_labels(name: str, data_dir: str | None = None) -> np.ndarray:
    """The training labels, indexed like `make_train_iter`'s "index" (CRD's sampler).

    Reads only the labels (no image is decoded). Index `j * process_count + p` is example j
    of process p's share; rows past the shares (when the split does not divide over the
    processes) get label -1.
    """
    source = sources.get_source(name, data_dir)
    count = jax.process_count()
    labels = np.full(source.info.num_train, -1, np.int32)
    for process in range(count):
        ds, _, _ = source.read(source.info.train_split, process, count, True)
        share = [b for b in tfds.as_numpy(ds.map(lambda ex: ex["label"]).batch(65_536))]
        share = np.concatenate(share) if share else np.zeros((0,), np.int32)
        labels[process : process + count * len(share) : count] = share
    return labels
