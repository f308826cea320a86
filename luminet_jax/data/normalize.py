"""Normalization of image batches on the accelerator (pure JAX; no TensorFlow).

The input pipeline can ship uint8 pixels (`input_pipeline.make_train_iter(output="uint8")`, a
quarter of float32's bytes) and leave the normalization, and the cast to the compute dtype, to
the jitted step. `normalize` computes exactly what the host does for float32 batches
(`augment.normalize`: `(x / 255 - mean) / std` in float32, per channel), so the two paths agree
to float32 rounding.
"""

from collections.abc import Sequence

import jax.numpy as jnp


def normalize(
    images: jnp.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: jnp.dtype = jnp.float32,
) -> jnp.ndarray:
    """`(images / 255 - mean) / std` per channel, computed in float32, returned as `dtype`.

    Args:
      images: (..., C) pixels in 0..255: uint8 or any float dtype (floats are read as pixel
        values, not as already-normalized images).
      mean, std: per-channel constants on the 0..1 scale (e.g. `augment.IMAGENET_MEAN`).
      dtype: output dtype (the step's compute dtype, e.g. bfloat16); the arithmetic is float32.

    Returns:
      An array of `images`' shape and `dtype`. Jittable; `mean` and `std` may be tuples
      (constants folded into the program) or arrays.
    """
    pixels = jnp.asarray(images).astype(jnp.float32) / 255.0
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return ((pixels - mean) / std).astype(dtype)
