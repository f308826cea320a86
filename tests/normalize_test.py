"""luminet_jax.data.normalize: the on-device normalization of uint8 batches equals the host's."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from luminet_jax.data import normalize

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _host(pixels, mean, std):
    """The host formula in float32, as augment.normalize computes it."""
    x = pixels.astype(np.float32) / np.float32(255)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def test_jitted_normalize_of_uint8_equals_the_host_formula():
    pixels = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    pixels[0, 0, 0] = (0, 128, 255)
    fn = jax.jit(lambda x: normalize.normalize(x, IMAGENET_MEAN, IMAGENET_STD))
    got = fn(jnp.asarray(pixels))
    assert got.dtype == jnp.float32 and got.shape == pixels.shape
    np.testing.assert_allclose(np.asarray(got), _host(pixels, IMAGENET_MEAN, IMAGENET_STD),
                               rtol=1e-6, atol=1e-6)  # fmt: skip
    # Float pixels (0..255) are normalized the same way; the compute dtype is the output's.
    np.testing.assert_allclose(
        np.asarray(fn(jnp.asarray(pixels, jnp.float32))), np.asarray(got), rtol=1e-6, atol=1e-6
    )
    bf16 = normalize.normalize(pixels, IMAGENET_MEAN, IMAGENET_STD, jnp.bfloat16)
    assert bf16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(bf16, np.float32), np.asarray(got), rtol=1e-2, atol=1e-2)


@pytest.mark.integration  # heavy: the second tier
def test_on_device_normalization_equals_the_pipelines_float32_batches(tmp_path):
    """A uint8 batch of the ImageNet pipeline, normalized by a jitted, sharded function on the
    devices, equals the pipeline's own float32 batch of the same pixels (host normalization)."""
    pytest.importorskip("tensorflow")
    import io

    from PIL import Image

    from luminet_jax.data import input_pipeline

    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("test", 4)):
        for c in range(2):
            (tmp_path / split / f"c{c}").mkdir(parents=True)
            for k in range(count):
                buffer = io.BytesIO()
                pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
                (tmp_path / split / f"c{c}" / f"{k}.jpg").write_bytes(buffer.getvalue())
    name = f"image_folder:{tmp_path}"
    kw = dict(global_batch=8, seed=0, augment="imagenet", image_size=24)
    pixels = next(input_pipeline.make_train_iter(name, output="uint8", **kw))["image"]
    floats = next(input_pipeline.make_train_iter(name, output="float32", **kw))["image"]
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    on_device = jax.jit(
        lambda x: normalize.normalize(x, IMAGENET_MEAN, IMAGENET_STD), out_shardings=sharding
    )(jax.device_put(pixels, sharding))
    np.testing.assert_allclose(np.asarray(on_device), floats, rtol=1e-6, atol=1e-6)


@pytest.mark.integration
def test_importable_without_tensorflow():
    code = (
        "import sys\n"
        "sys.modules['tensorflow'] = None\n"
        "from luminet_jax.data import normalize\n"
        "print(normalize.normalize([[[0, 255, 128]]], (0.5,) * 3, (0.5,) * 3))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
