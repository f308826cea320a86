"""Input-pipeline timing for `benchmarks/step.py --data`: device-resident CIFAR batches and a
tf.data JPEG decode + ImageNet augment (TensorFlow is imported only here)."""

from __future__ import annotations

import pathlib
import time


def time_data(args, *, root: pathlib.Path) -> list[dict]:
    """images/s of DeviceData batches and of a tf.data JPEG decode + ImageNet augment."""
    results = []
    import jax
    import numpy as np

    from luminet_jax import sharding
    from luminet_jax.data import device_data

    mesh = sharding.make_mesh(jax.devices()[: args.devices])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8)  # CIFAR-sized split
    labels = rng.integers(0, 100, 50_000).astype(np.int32)
    data = device_data.DeviceData(
        images, labels, mesh=mesh, global_batch=args.batch, seed=0, mean=(0.5,) * 3, std=(0.25,) * 3
    )
    jax.block_until_ready(data.batch(0))
    t0 = time.perf_counter()
    for step in range(1, args.data_batches + 1):
        jax.block_until_ready(data.batch(step))
    dt = time.perf_counter() - t0
    results.append(
        dict(
            pipeline="device_data (CIFAR, crop+flip)",
            images_per_s=args.batch * args.data_batches / dt,
        )
    )

    tar_path = root.parent / "shared" / "data" / "tiny-imagenet-200-mini.tar.gz"
    try:
        import tarfile

        import tensorflow as tf

        from luminet_jax.data import augment
    except ImportError as e:
        print(f"[data] skipping tf.data JPEG pipeline: {e}")
        return results
    if not tar_path.exists():
        print(f"[data] skipping tf.data JPEG pipeline: {tar_path} is absent")
        return results
    jpegs = []
    with tarfile.open(tar_path) as tar:
        for member in tar:
            if member.name.endswith(".JPEG") and "/train/" in member.name:
                jpegs.append(tar.extractfile(member).read())
                if len(jpegs) >= 4096:
                    break
    for size in (64, 224):
        ds = tf.data.Dataset.from_tensor_slices(tf.constant(jpegs)).repeat()
        ds = ds.enumerate().map(
            lambda i, b, size=size: augment.normalize(
                augment.imagenet_train(
                    tf.io.decode_jpeg(b, channels=3), tf.stack([i, i * 0 + 7]), size=size
                ),
                augment.IMAGENET_MEAN,
                augment.IMAGENET_STD,
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        it = iter(ds.batch(args.batch).prefetch(2))
        next(it)
        t0 = time.perf_counter()
        for _ in range(args.data_batches):
            next(it)
        dt = time.perf_counter() - t0
        results.append(
            dict(
                pipeline=f"tf.data JPEG decode + RandomResizedCrop {size} + flip (64px JPEGs)",
                images_per_s=args.batch * args.data_batches / dt,
            )
        )
    return results
