"""Device-resident datasets: the whole uint8 split lives on the accelerators (pure JAX).

For CIFAR-size data (50,000 x 32 x 32 x 3 = 150 MB) the host input pipeline is the bottleneck
of a small model's step; here one jitted function turns a step number into a batch with no host
work (the epoch's permutation is computed once per epoch and kept on the devices): the step's
index slice, the gather, random crop with zero padding
and horizontal flip, and normalisation, all keyed by (seed, step). The split is replicated on
every device; the gathered batch comes out sharded over the mesh axis "data".
"""

import copy
import functools
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from luminet_jax.data import normalize

DATA_AXIS = "data"
PADDING = 4


def step_keys(
    seed: int | jax.Array, step: jax.Array, steps_per_epoch: int
) -> tuple[jax.Array, jax.Array]:
    """(permutation key of the step's epoch, augmentation key of the step).

    Both derive from `jax.random.key(seed)`, through separate streams so that the permutation
    key of epoch e and the augmentation key of step e never coincide.
    """
    root = jax.random.key(seed)
    perm_key = jax.random.fold_in(jax.random.fold_in(root, 0), step // steps_per_epoch)
    aug_key = jax.random.fold_in(jax.random.fold_in(root, 1), step)
    return perm_key, aug_key


def crop_flip_params(key: jax.Array, batch: int, padding: int = PADDING):
    """Per-example crop offsets (B, 2) in [0, 2 * padding] and flips (B,) bool."""
    offset_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(offset_key, (batch, 2), 0, 2 * padding + 1)
    flips = jax.random.bernoulli(flip_key, 0.5, (batch,))
    return offsets, flips


def random_crop_flip(images: jax.Array, key: jax.Array, padding: int = PADDING) -> jax.Array:
    """Zero-pads each image by `padding`, crops the original size at random, flips at random.

    Args:
      images: (B, H, W, C), any dtype.
      key: PRNG key; the draws are `crop_flip_params(key, B, padding)`.

    Returns:
      (B, H, W, C) images of the input dtype.
    """
    batch, height, width, channels = images.shape
    offsets, flips = crop_flip_params(key, batch, padding)
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

    def one(image, offset, flip):
        crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))
        return jnp.where(flip, crop[:, ::-1], crop)

    return jax.vmap(one)(padded, offsets, flips)


@functools.partial(jax.jit, static_argnames=("num_examples", "steps_per_epoch", "sharding"))
def _permutation_fn(seed, step, *, num_examples, steps_per_epoch, sharding):
    """The permutation of the epoch holding `step`, replicated on every device."""
    perm_key, _ = step_keys(seed, step, steps_per_epoch)
    permutation = jax.random.permutation(perm_key, num_examples)
    # Keep the sort replicated: left to propagation it gets sharded (a slow distributed sort).
    return jax.lax.with_sharding_constraint(permutation, NamedSharding(sharding.mesh, P()))


@functools.partial(
    jax.jit,
    static_argnames=("global_batch", "steps_per_epoch", "augment", "mean", "std", "sharding"),
)
def _batch_fn(
    images,
    labels,
    permutation,
    seed,
    step,
    *,
    global_batch,
    steps_per_epoch,
    augment,
    mean,
    std,
    sharding,
):
    """One global batch; module-level so instances with the same shapes share the compilation."""
    _, aug_key = step_keys(seed, step, steps_per_epoch)
    start = (step % steps_per_epoch) * global_batch
    index = jax.lax.dynamic_slice_in_dim(permutation, start, global_batch)
    # Each device gathers only its own rows of the batch from its replica of the split.
    index = jax.lax.with_sharding_constraint(index, sharding)
    batch_images = jnp.take(images, index, axis=0)
    if augment == "cifar":
        batch_images = random_crop_flip(batch_images, aug_key)
    batch = {
        "image": normalize.normalize(batch_images, mean, std),
        "label": jnp.take(labels, index, axis=0).astype(jnp.int32),
        "index": index.astype(jnp.int32),  # the examples' positions in the split (CRD)
    }
    return jax.lax.with_sharding_constraint(batch, sharding)


class DeviceData:
    """A uint8 split held on the devices; `batch(step)` is one jitted call.

    Attributes:
      steps_per_epoch: N // global_batch (the remainder of each epoch is dropped).
      num_examples: N.
    """

    def __init__(
        self,
        images_uint8: np.ndarray,
        labels: np.ndarray,
        *,
        mesh: Mesh,
        global_batch: int,
        seed: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: str | None = "cifar",
    ):
        """Places the split on the devices of `mesh` (replicated).

        Args:
          images_uint8: (N, H, W, 3) uint8, identical on every process.
          labels: (N,) integer labels.
          mesh: mesh with a "data" axis; batches are sharded over it.
          global_batch: batch over all devices; must divide by the "data" axis size.
          seed: run seed; batches are a function of (seed, step). `with_seed` gives the
            batches of another seed over the same arrays (several runs in one job).
          mean, std: per-channel normalisation constants (0..1 pixel scale).
          augment: "cifar" (zero-pad 4, random crop, flip; also for None) or "none".
        """
        augment = augment or "cifar"  # None / "": the CIFAR default, as make_train_iter.
        if augment not in ("cifar", "none"):
            raise ValueError(f"augment must be 'cifar' or 'none', got {augment!r}")
        images_uint8 = np.asarray(images_uint8)
        labels = np.asarray(labels)
        if images_uint8.dtype != np.uint8 or images_uint8.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, H, W, C), got {images_uint8.dtype} {images_uint8.shape}"
            )
        if len(labels) != len(images_uint8):
            raise ValueError(f"{len(images_uint8)} images but {len(labels)} labels")
        data_size = mesh.shape[DATA_AXIS]
        if global_batch <= 0 or global_batch % data_size:
            raise ValueError(
                f"global_batch={global_batch} must be a positive multiple of the {data_size} "
                f"devices on mesh axis {DATA_AXIS!r}"
            )
        self.num_examples = len(labels)
        # Reference: mdistiller keeps the last partial batch; static shapes drop it here.
        self.steps_per_epoch = self.num_examples // global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.num_examples} examples < global_batch={global_batch}")
        self.global_batch = global_batch
        self.mesh = mesh
        replicated = NamedSharding(mesh, P())
        self.batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
        # make_array_from_callback works on several hosts, where each process holds the data.
        self.images = jax.make_array_from_callback(
            images_uint8.shape, replicated, lambda index: images_uint8[index]
        )
        labels = labels.astype(np.int32)
        self.labels = jax.make_array_from_callback(
            labels.shape, replicated, lambda index: labels[index]
        )
        self._seed = jnp.asarray(seed, jnp.uint32)
        self._perm_epoch, self._permutation = None, None  # Cache of the current epoch's order.
        self._static = dict(
            global_batch=global_batch,
            steps_per_epoch=self.steps_per_epoch,
            augment=augment,
            mean=tuple(float(m) for m in mean),
            std=tuple(float(s) for s in std),
            sharding=self.batch_sharding,
        )

    def with_seed(self, seed: int) -> "DeviceData":
        """The same split (the arrays are shared, not copied) with the batches of `seed`."""
        other = copy.copy(self)
        other._seed = jnp.asarray(seed, jnp.uint32)
        other._perm_epoch, other._permutation = None, None
        return other

    def batch(self, step: int) -> dict[str, jax.Array]:
        """The batch of a global step: {"image": float32 (B, H, W, C), "label": int32 (B,),
        "index": int32 (B,) (each example's position in the split)}.

        The epoch's permutation is computed once, at the first step of an epoch asked for, and
        kept on the devices; the rest of the work is one jitted call with no host round trip.
        """
        step = int(step)
        epoch = step // self.steps_per_epoch
        step_array = jnp.asarray(step, jnp.int32)
        if epoch != self._perm_epoch:
            self._permutation = _permutation_fn(
                self._seed,
                step_array,
                num_examples=self.num_examples,
                steps_per_epoch=self.steps_per_epoch,
                sharding=self.batch_sharding,
            )
            self._perm_epoch = epoch
        return _batch_fn(
            self.images, self.labels, self._permutation, self._seed, step_array, **self._static
        )


class EvalData:
    """An eval split held on the devices: normalized once, in padded global batches.

    The (N, H, W, C) uint8 images are uploaded once, as (num_batches, B, H, W, C) arrays
    split over "data" along B (padding rows: zero images, label 0, mask 0), and normalized
    there by one jitted call; every pass (`batches()`) then reads device memory only: no
    host work and no host-to-device copy per evaluation.
    """

    def __init__(
        self,
        images_uint8: np.ndarray,
        labels: np.ndarray,
        *,
        mesh: Mesh,
        global_batch: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ):
        """Args: the whole split (identical on every process), the eval batch over all
        devices and the per-channel normalization constants (0..1 pixel scale)."""
        images, labels = np.asarray(images_uint8), np.asarray(labels)
        n = len(labels)
        self.num_batches = max(1, math.ceil(n / global_batch))
        pad = self.num_batches * global_batch - n
        shape = (self.num_batches, global_batch)

        def place(x, dtype):
            x = np.concatenate([np.asarray(x, dtype), np.zeros((pad, *x.shape[1:]), dtype)])
            x = x.reshape(shape + x.shape[1:])
            return jax.make_array_from_callback(x.shape, self._sharding, lambda i: x[i])

        self._sharding = NamedSharding(mesh, P(None, DATA_AXIS))
        mask = place(np.ones(n, np.float32), np.float32)  # padding rows: 0

        def normalized(pixels, mask):  # padding images stay zero, as `eval_batches`' do
            x = normalize.normalize(pixels, mean, std)
            return jnp.where(mask[..., None, None, None] > 0, x, 0.0)

        self.arrays = {  # (num_batches, B, ...) on the devices; images normalized float32
            "image": jax.jit(normalized, out_shardings=self._sharding)(
                place(images, np.uint8), mask
            ),
            "label": place(labels, np.int32),
            "mask": mask,
        }
        self._take = jax.jit(
            lambda arrays, b: jax.tree.map(lambda x: x[b], arrays),
            out_shardings=NamedSharding(mesh, P(DATA_AXIS)),
        )
        # The batch numbers live on the devices too: a pass sends nothing from the host.
        replicated = NamedSharding(mesh, P())
        self._index = [jax.device_put(np.int32(b), replicated) for b in range(self.num_batches)]

    def batches(self) -> Iterator[dict[str, jax.Array]]:
        """One pass: {"image", "label", "mask"} global batches, already on the devices."""
        for index in self._index:
            yield self._take(self.arrays, index)


def eval_batches(
    images: np.ndarray,
    labels: np.ndarray,
    global_batch: int,
    *,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Padded, masked host batches over arrays; every example appears exactly once.

    Yields this process's rows of each global batch (all of it with one process), ready for
    `sharding.to_global`. Padding rows have zero images, label 0 and mask 0. The trainer
    evaluates through `EvalData`; this host path is what that is tested against (and the
    "before" of benchmarks/eval_bench.py).

    Args:
      images: (N, H, W, C); uint8 images are normalized with `mean`/`std` (required then),
        float images are passed through.
      labels: (N,) integer labels.
      global_batch: examples per global batch.

    Yields:
      {"image": float32 (b, H, W, C), "label": int32 (b,), "mask": float32 (b,)} with
      b = global_batch // process_count.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch % process_count:
        raise ValueError(f"global_batch={global_batch} must divide by {process_count} processes")
    local_batch = global_batch // process_count
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype == np.uint8:
        if mean is None or std is None:
            raise ValueError("uint8 images need mean and std")
        scale = np.float32(1 / 255)
        mean_a, std_a = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        convert = lambda x: (x.astype(np.float32) * scale - mean_a) / std_a
    else:
        convert = lambda x: x.astype(np.float32)
    n = len(labels)
    for b in range(math.ceil(n / global_batch)):
        start = b * global_batch + process_index * local_batch
        stop = min(start + local_batch, n)
        count = max(stop - start, 0)
        image = np.zeros((local_batch,) + images.shape[1:], np.float32)
        label = np.zeros((local_batch,), np.int32)
        mask = np.zeros((local_batch,), np.float32)
        if count:
            image[:count] = convert(images[start:stop])
            label[:count] = labels[start:stop]
            mask[:count] = 1.0
        yield {"image": image, "label": label, "mask": mask}
