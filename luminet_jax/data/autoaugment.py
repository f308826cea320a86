"""AutoAugment's CIFAR-10 policy (Cubuk et al. 2019) as pure, stateless TensorFlow ops.

Used for the paper's Table 5 (`augment="autoaugment"`: pad-crop + flip, then this policy).
The policy table and the magnitude bins follow torchvision's `AutoAugment(CIFAR10)`: 25
sub-policies of two (op, probability, magnitude bin) entries; one sub-policy is drawn per image,
each of its ops runs with its probability, and signed magnitudes get a random sign.
Geometric ops fill with black and use nearest-neighbour sampling, as torchvision's default.
"""

import math

import tensorflow as tf

from luminet_jax.data import augment

NUM_BINS = 10
# (op, probability, magnitude bin) pairs; bin None for ops without a magnitude.
CIFAR10_POLICY = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)
SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"}
SIGNED |= {"Brightness", "Color", "Contrast", "Sharpness"}


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0)


def _gray(image: tf.Tensor) -> tf.Tensor:
    return tf.image.rgb_to_grayscale(image)  # ITU-R 601-2 luma, as torchvision and PIL.


def _transform(image: tf.Tensor, matrix: list) -> tf.Tensor:
    """Projective transform; `matrix` maps output (x, y) to input coordinates."""
    shape = tf.shape(image)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=tf.reshape(tf.cast(tf.stack(matrix), tf.float32), [1, 8]),
        output_shape=shape[:2],
        fill_value=0.0,
        interpolation="NEAREST",
        fill_mode="CONSTANT",
    )
    return out[0]


def _rotate(image: tf.Tensor, degrees: tf.Tensor) -> tf.Tensor:
    shape = tf.cast(tf.shape(image), tf.float32)
    cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    cos, sin = tf.cos(degrees * math.pi / 180), tf.sin(degrees * math.pi / 180)
    return _transform(
        image,
        [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0],
    )


def _sharpness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    blurred = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
    blurred = tf.round(blurred)
    # PIL keeps the one-pixel border unchanged.
    blurred = tf.pad(blurred - image[1:-1, 1:-1], [[1, 1], [1, 1], [0, 0]]) + image
    return _blend(blurred, image, factor)


def _autocontrast(image: tf.Tensor) -> tf.Tensor:
    lo = tf.reduce_min(image, axis=[0, 1])
    hi = tf.reduce_max(image, axis=[0, 1])
    scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1e-6), 1.0)
    lo = tf.where(hi > lo, lo, 0.0)
    return tf.clip_by_value((image - lo) * scale, 0.0, 255.0)


def _equalize_channel(channel: tf.Tensor) -> tf.Tensor:
    """PIL's ImageOps.equalize on one uint8-valued channel (float32 in, float32 out)."""
    values = tf.cast(channel, tf.int32)
    hist = tf.math.bincount(tf.reshape(values, [-1]), minlength=256, maxlength=256)
    last = tf.gather(hist, tf.reduce_max(tf.where(hist > 0)[:, 0]))
    step = (tf.reduce_sum(hist) - last) // 255
    lut = (tf.cumsum(hist, exclusive=True) + step // 2) // tf.maximum(step, 1)
    lut = tf.clip_by_value(lut, 0, 255)
    return tf.where(step > 0, tf.cast(tf.gather(lut, values), tf.float32), channel)


def _equalize(image: tf.Tensor) -> tf.Tensor:
    return tf.stack([_equalize_channel(image[..., c]) for c in range(3)], axis=-1)


def apply_op(image: tf.Tensor, name: str, magnitude_bin: int | None, sign: tf.Tensor) -> tf.Tensor:
    """Applies one named op to a float32 image in 0..255 (sign: +1 or -1 for signed ops)."""
    m = 0.0 if magnitude_bin is None else magnitude_bin / (NUM_BINS - 1)  # position in the bins
    s = sign if name in SIGNED else 1.0
    width = tf.cast(tf.shape(image)[1], tf.float32)
    height = tf.cast(tf.shape(image)[0], tf.float32)
    if name == "ShearX":
        return _transform(image, [1.0, s * 0.3 * m, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    if name == "ShearY":
        return _transform(image, [1.0, 0.0, 0.0, s * 0.3 * m, 1.0, 0.0, 0.0, 0.0])
    if name == "TranslateX":
        shift = tf.round(s * 150.0 / 331.0 * width * m)
        return _transform(image, [1.0, 0.0, -shift, 0.0, 1.0, 0.0, 0.0, 0.0])
    if name == "TranslateY":
        shift = tf.round(s * 150.0 / 331.0 * height * m)
        return _transform(image, [1.0, 0.0, 0.0, 0.0, 1.0, -shift, 0.0, 0.0])
    if name == "Rotate":
        return _rotate(image, s * 30.0 * m)
    if name == "Brightness":
        return _blend(tf.zeros_like(image), image, 1.0 + s * 0.9 * m)
    if name == "Color":
        return _blend(tf.tile(_gray(image), [1, 1, 3]), image, 1.0 + s * 0.9 * m)
    if name == "Contrast":
        mean = tf.reduce_mean(tf.round(_gray(image)))
        return _blend(tf.fill(tf.shape(image), mean), image, 1.0 + s * 0.9 * m)
    if name == "Sharpness":
        return _sharpness(image, 1.0 + s * 0.9 * m)
    if name == "Posterize":
        bits = 8 - int(round(magnitude_bin / ((NUM_BINS - 1) / 4)))
        mask = 256 - 2 ** (8 - bits)
        return tf.cast(tf.bitwise.bitwise_and(tf.cast(image, tf.int32), mask), tf.float32)
    if name == "Solarize":
        threshold = 255.0 * (1.0 - m)
        return tf.where(image >= threshold, 255.0 - image, image)
    if name == "AutoContrast":
        return _autocontrast(image)
    if name == "Equalize":
        return _equalize(image)
    if name == "Invert":
        return 255.0 - image
    raise ValueError(f"unknown AutoAugment op {name!r}")


def cifar10_policy(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Applies one random sub-policy of the CIFAR-10 AutoAugment policy; returns uint8."""
    choice_seed, prob_seed, sign_seed = augment.split_seed(seed, 3)
    index = tf.random.stateless_uniform([], choice_seed, 0, len(CIFAR10_POLICY), dtype=tf.int32)
    probs = tf.random.stateless_uniform([2], prob_seed)
    signs = tf.where(tf.random.stateless_uniform([2], sign_seed) < 0.5, -1.0, 1.0)
    image = tf.cast(image, tf.float32)

    def branch(sub_policy):
        def run():
            out = image
            for k, (name, prob, magnitude_bin) in enumerate(sub_policy):
                out = tf.cond(
                    probs[k] < prob,
                    lambda out=out, n=name, b=magnitude_bin, k=k: apply_op(out, n, b, signs[k]),
                    lambda out=out: out,
                )
            return out

        return run

    out = tf.switch_case(index, [branch(sub) for sub in CIFAR10_POLICY])
    return tf.cast(tf.round(tf.clip_by_value(out, 0.0, 255.0)), tf.uint8)
