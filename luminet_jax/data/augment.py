"""Pure TensorFlow preprocessing for one example (testable on a single image).

Random functions take a stateless seed: an int32/int64 tensor of shape (2,). The input pipeline
derives it from (config seed, process, epoch, position in the epoch), so batches are a function
of (seed, step) only. Images enter as uint8 (H, W, 3) and leave the random ops as uint8 (or
float32 in 0..255 after a resize); `normalize` maps them to float32 `(x / 255 - mean) / std`.

Normalisation constants (per channel, RGB, on 0..1 pixels):
- CIFAR-100: mdistiller `mdistiller/dataset/cifar100.py` (the LumiNet reference's data code).
- CIFAR-10: the values usually quoted for the official release (DATA.md; torchvision examples).
- ImageNet: torchvision's ImageNet constants, used by mdistiller's `imagenet.py`.
- Tiny-ImageNet: mean (0.4802, 0.4481, 0.3975), the usual quoted value; std (0.2770, 0.2691,
  0.2821), the per-pixel std over the train set, which agrees with the statistics measured on
  the 20,000-image subset in ../shared/data/DATA.md (0.2764, 0.2686, 0.2818) to 0.001.
"""

import math

import tensorflow as tf

try:  # TF must not reserve accelerator memory that JAX needs.
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # Devices were already initialised by an earlier import.
    pass

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_IMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINY_IMAGENET_STD = (0.2770, 0.2691, 0.2821)

RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
RRC_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its fallback.


def split_seed(seed: tf.Tensor, num: int) -> list[tf.Tensor]:
    """`num` independent stateless seeds derived from `seed`."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=num)
    return [seeds[i] for i in range(num)]


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Mirrors the image left-right with probability 0.5."""
    image = tf.convert_to_tensor(image)
    flip = tf.random.stateless_uniform([], seed=seed) < 0.5
    return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def pad_and_crop(image: tf.Tensor, offsets: tf.Tensor, padding: int) -> tf.Tensor:
    """Zero-pads `padding` pixels on each side, then crops the original size at offsets (dy, dx)."""
    shape = tf.shape(image)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    return tf.slice(padded, [offsets[0], offsets[1], 0], shape)


def cifar_train(image: tf.Tensor, seed: tf.Tensor, *, padding: int = 4) -> tf.Tensor:
    """CIFAR training augmentation: zero-pad `padding`, random crop of the input size, flip.

    As torchvision `RandomCrop(32, padding=4)` + `RandomHorizontalFlip()` in mdistiller.
    """
    crop_seed, flip_seed = split_seed(seed, 2)
    offsets = tf.random.stateless_uniform(
        [2], seed=crop_seed, minval=0, maxval=2 * padding + 1, dtype=tf.int32
    )
    return random_flip(pad_and_crop(image, offsets, padding), flip_seed)


def _resize(image: tf.Tensor, size: tuple[int, int] | tf.Tensor) -> tf.Tensor:
    # Bilinear with antialiasing, like torchvision's PIL/antialiased tensor resize.
    return tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=True)


def random_resized_crop_box(
    height: tf.Tensor,
    width: tf.Tensor,
    seed: tf.Tensor,
    *,
    scale: tuple[float, float] = RRC_SCALE,
    ratio: tuple[float, float] = RRC_RATIO,
) -> tf.Tensor:
    """The box (top, left, h, w) torchvision's `RandomResizedCrop.get_params` would choose.

    Draws RRC_ATTEMPTS candidate boxes at once and takes the first that fits; if none does,
    falls back to the largest central box with the aspect ratio clipped into `ratio`.
    """
    area_seed, ratio_seed, top_seed, left_seed = split_seed(seed, 4)
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = h_f * w_f * tf.random.stateless_uniform([RRC_ATTEMPTS], area_seed, scale[0], scale[1])
    log_ratio = tf.random.stateless_uniform(
        [RRC_ATTEMPTS], ratio_seed, math.log(ratio[0]), math.log(ratio[1])
    )
    aspect = tf.exp(log_ratio)
    w = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
    h = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    # Uniform integers in [0, H - h] and [0, W - w] from uniform floats (per candidate bound).
    u_top = tf.random.stateless_uniform([RRC_ATTEMPTS], top_seed)
    u_left = tf.random.stateless_uniform([RRC_ATTEMPTS], left_seed)
    top = tf.cast(tf.floor(u_top * tf.cast(height - h + 1, tf.float32)), tf.int32)
    left = tf.cast(tf.floor(u_left * tf.cast(width - w + 1, tf.float32)), tf.int32)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)

    in_ratio = w_f / h_f
    fb_w = tf.where(
        in_ratio < ratio[0],
        width,
        tf.where(in_ratio > ratio[1], tf.cast(tf.round(h_f * ratio[1]), tf.int32), width),
    )
    fb_h = tf.where(
        in_ratio < ratio[0],
        tf.cast(tf.round(w_f / ratio[0]), tf.int32),
        height,
    )
    fallback = tf.stack([(height - fb_h) // 2, (width - fb_w) // 2, fb_h, fb_w])
    chosen = tf.stack([top[first], left[first], h[first], w[first]])
    return tf.where(tf.reduce_any(fits), chosen, fallback)


def imagenet_train(image: tf.Tensor, seed: tf.Tensor, *, size: int = 224) -> tf.Tensor:
    """`RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))` + flip; float32 in 0..255."""
    box_seed, flip_seed = split_seed(seed, 2)
    shape = tf.shape(image)
    box = random_resized_crop_box(shape[0], shape[1], box_seed)
    crop = tf.slice(image, [box[0], box[1], 0], [box[2], box[3], 3])
    return random_flip(_resize(crop, (size, size)), flip_seed)


def imagenet_eval(
    image: tf.Tensor, *, size: int = 224, resize_size: int | None = None
) -> tf.Tensor:
    """Resize the shorter side to `resize_size` (256 for 224), center crop `size`; float32."""
    resize_size = resize_size or int(round(size * 256 / 224))
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize_size / tf.reduce_min(shape)
    # torchvision truncates the longer side: int(long * short_target / short).
    new_hw = tf.where(shape <= tf.reduce_min(shape), resize_size, tf.cast(shape * scale, tf.int32))
    resized = _resize(image, new_hw)
    # torchvision center_crop: int(round((dim - size) / 2)), round half to even.
    top = tf.cast(tf.round(tf.cast(new_hw[0] - size, tf.float32) / 2), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_hw[1] - size, tf.float32) / 2), tf.int32)
    return tf.slice(resized, [top, left, 0], [size, size, 3])


def resize_to(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resizes to (size, size) when the image has another size; otherwise returns it unchanged."""
    shape = tf.shape(image)
    same = (shape[0] == size) & (shape[1] == size)
    return tf.cond(
        same,
        lambda: tf.cast(image, tf.float32),
        lambda: tf.clip_by_value(_resize(image, (size, size)), 0.0, 255.0),
    )


def normalize(image: tf.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> tf.Tensor:
    """float32 `(image / 255 - mean) / std`, per channel (image in 0..255)."""
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
