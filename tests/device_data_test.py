"""Tests for luminet_jax.data.device_data (pure JAX, 8 fake CPU devices)."""

import ast
import pathlib

import chex
import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from luminet_jax import sharding
from luminet_jax.data import device_data

N, H, W = 64, 8, 8
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)


@pytest.fixture(scope="module")
def mesh():
    return Mesh(np.array(jax.devices()), ("data",))


def _id_images(n=N):
    """Images whose every pixel of example i is i (so the example is readable after a shuffle)."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, H, W, 3))
    return np.ascontiguousarray(images), np.arange(n, dtype=np.int32)


def _random_images(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8), rng.integers(0, 10, n)


def _numpy_crop_flip(images, offsets, flips, padding=4):
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out = np.empty_like(images)
    for i, ((dy, dx), flip) in enumerate(zip(offsets, flips)):
        crop = padded[i, dy : dy + images.shape[1], dx : dx + images.shape[2]]
        out[i] = crop[:, ::-1] if flip else crop
    return out


def test_module_does_not_import_tensorflow():
    tree = ast.parse(pathlib.Path(device_data.__file__).read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert imported and not [
        m for m in imported if m.split(".")[0] in ("tensorflow", "tensorflow_datasets")
    ]


def test_shapes_dtypes_and_sharding(mesh):
    images, labels = _random_images()
    data = device_data.DeviceData(
        images, labels, mesh=mesh, global_batch=16, seed=0, mean=MEAN, std=STD
    )
    assert data.steps_per_epoch == N // 16
    batch = data.batch(0)
    chex.assert_shape(batch["image"], (16, H, W, 3))
    chex.assert_shape(batch["label"], (16,))
    assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
    for value in batch.values():
        assert value.sharding.is_equivalent_to(NamedSharding(mesh, P("data")), value.ndim)
        assert len(value.addressable_shards) == 8
        assert value.addressable_shards[0].data.shape[0] == 2


def test_steps_per_epoch_drops_remainder_and_checks_batch(mesh):
    images, labels = _random_images(60)
    data = device_data.DeviceData(
        images, labels, mesh=mesh, global_batch=16, seed=0, mean=MEAN, std=STD
    )
    assert data.steps_per_epoch == 3
    with pytest.raises(ValueError, match="multiple of the 8 devices"):
        device_data.DeviceData(
            images, labels, mesh=mesh, global_batch=12, seed=0, mean=MEAN, std=STD
        )


def test_deterministic_in_seed_and_step(mesh):
    images, labels = _random_images()
    make = lambda seed: device_data.DeviceData(
        images, labels, mesh=mesh, global_batch=16, seed=seed, mean=MEAN, std=STD
    )
    a, b, c = make(3), make(3), make(4)
    chex.assert_trees_all_equal(jax.device_get(a.batch(5)), jax.device_get(b.batch(5)))
    chex.assert_trees_all_equal(jax.device_get(a.batch(5)), jax.device_get(a.batch(5)))
    assert not np.array_equal(a.batch(5)["image"], a.batch(6)["image"])
    assert not np.array_equal(a.batch(5)["image"], c.batch(5)["image"])


def test_cached_epoch_permutation_does_not_depend_on_call_order(mesh):
    images, labels = _random_images()
    make = lambda: device_data.DeviceData(
        images, labels, mesh=mesh, global_batch=16, seed=3, mean=MEAN, std=STD
    )
    fresh, visited = make(), make()
    for step in (0, 9, 1, 30, 2):  # Jumps across epochs and back, as a resume does.
        visited.batch(step)
    for step in (2, 5, 31):
        chex.assert_trees_all_equal(
            jax.device_get(visited.batch(step)), jax.device_get(make().batch(step))
        )
    chex.assert_trees_all_equal(jax.device_get(fresh.batch(31)), jax.device_get(make().batch(31)))


def test_each_epoch_visits_every_example_once(mesh):
    images, ids = _id_images()
    data = device_data.DeviceData(
        images, ids, mesh=mesh, global_batch=16, seed=1, mean=MEAN, std=STD, augment="none"
    )
    epochs = []
    for epoch in range(2):
        batches = [jax.device_get(data.batch(epoch * 4 + i)) for i in range(4)]
        epochs.append(np.concatenate([b["label"] for b in batches]))
        np.testing.assert_array_equal(np.sort(epochs[-1]), np.arange(N))
        # "index" is each example's position in the split (here equal to its id label).
        np.testing.assert_array_equal(np.concatenate([b["index"] for b in batches]), epochs[-1])
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled per epoch
    # Images travel with their labels and are normalized with (x / 255 - mean) / std.
    batch = data.batch(2)
    expected = (np.asarray(batch["label"], np.float32)[:, None] / 255 - MEAN) / STD
    np.testing.assert_allclose(batch["image"][:, 0, 0, :], expected, rtol=1e-5, atol=1e-6)


def test_random_crop_flip_matches_numpy_reference():
    images, _ = _random_images(16)
    key = jax.random.key(7)
    out = np.asarray(device_data.random_crop_flip(images, key))
    offsets, flips = jax.device_get(device_data.crop_flip_params(key, 16))
    assert offsets.min() >= 0 and offsets.max() <= 8
    assert 0 < flips.sum() < 16
    np.testing.assert_array_equal(out, _numpy_crop_flip(images, offsets, flips))


def test_batch_matches_numpy_reference(mesh):
    images, labels = _random_images()
    data = device_data.DeviceData(
        images, labels, mesh=mesh, global_batch=16, seed=11, mean=MEAN, std=STD
    )
    step = 6  # epoch 1, third batch
    perm_key, aug_key = device_data.step_keys(11, np.int32(step), data.steps_per_epoch)
    index = np.asarray(jax.random.permutation(perm_key, N))[32:48]
    offsets, flips = jax.device_get(device_data.crop_flip_params(aug_key, 16))
    expected = _numpy_crop_flip(images[index], offsets, flips).astype(np.float32) / 255
    expected = (expected - np.float32(MEAN)) / np.float32(STD)
    batch = jax.device_get(data.batch(step))
    np.testing.assert_array_equal(batch["label"], labels[index])
    np.testing.assert_allclose(batch["image"], expected, rtol=1e-6, atol=1e-6)
    # Zero padding shows up as -mean/std where a crop reaches outside the image.
    shifted = np.flatnonzero(offsets[:, 0] == 0)
    if shifted.size:
        np.testing.assert_allclose(
            batch["image"][shifted[0], 0],
            np.broadcast_to(-np.float32(MEAN) / np.float32(STD), (W, 3)),
            rtol=1e-6,
        )


def test_eval_batches_pad_and_mask():
    images, ids = _id_images(21)
    batches = list(device_data.eval_batches(images, ids, 8, mean=MEAN, std=STD))
    assert len(batches) == 3
    labels = np.concatenate([b["label"] for b in batches])
    masks = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(masks, [1.0] * 21 + [0.0] * 3)
    np.testing.assert_array_equal(labels[:21], np.arange(21))
    assert np.all(batches[-1]["image"][5:] == 0)
    np.testing.assert_allclose(
        batches[0]["image"][3, 0, 0], (3 / 255 - np.float32(MEAN)) / STD, rtol=1e-6
    )
    # Two processes: each gets its half of each global batch; together every example once.
    halves = [
        list(
            device_data.eval_batches(
                images, ids, 8, mean=MEAN, std=STD, process_index=p, process_count=2
            )
        )
        for p in range(2)
    ]
    assert len(halves[0]) == len(halves[1]) == 3
    seen = np.concatenate([b["label"][b["mask"] > 0] for half in halves for b in half])
    np.testing.assert_array_equal(np.sort(seen), np.arange(21))


def test_eval_data_equals_the_host_batches_and_sends_nothing_per_pass():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (37, 4, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 37)
    stats = dict(mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3))
    data = device_data.EvalData(images, labels, mesh=sharding.make_mesh(), global_batch=16, **stats)
    host = list(device_data.eval_batches(images, labels, 16, **stats))
    assert data.num_batches == len(host) == 3
    list(data.batches())  # the first pass compiles the batch selection
    with jax.transfer_guard_host_to_device("disallow"):  # nothing from the host after that
        on_device = list(data.batches())
    for want, got in zip(host, on_device, strict=True):
        for key in ("image", "label", "mask"):
            np.testing.assert_allclose(np.asarray(got[key]), want[key], rtol=1e-6, atol=1e-6)
