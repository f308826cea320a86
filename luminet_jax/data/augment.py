"""Pure TensorFlow preprocessing for one example (testable on a single image).

Random functions take a stateless seed: an int32/int64 tensor of shape (2,). The input pipeline
derives it from (config seed, process, epoch, position in the epoch), so batches are a function
of (seed, step) only. Images enter as uint8 (H, W, 3) and leave the random ops as uint8 (or
float32 in 0..255 after a resize); `normalize` maps them to float32 `(x / 255 - mean) / std`.

ImageNet, two implementations of the same augmentations:
- `imagenet_train` / `imagenet_eval`: the reference, on decoded pixels, float32 out (a whole
  decode, then `tf.image.resize(antialias=True)` of the crop). Kept as the definition that the
  fast path is tested against, and as the "before" of `benchmarks/data_bench.py`.
- `imagenet_train_uint8` / `imagenet_eval_uint8`: the input pipeline's path, uint8 out. From
  JPEG bytes they read the header only (`tf.image.extract_jpeg_shape`), draw the same box with
  the same seed, decode just the rows and columns the output needs
  (`tf.image.decode_and_crop_jpeg`, the window widened by JPEG_MARGIN so that its pixels
  equal a whole decode's), and resample with `resample`: the same antialiased bilinear
  (triangle) filter as `tf.image.resize(antialias=True)` as a few small matrix products, equal
  to it within float rounding (so within one level after rounding to uint8). Where the crop is
  at least 2x (4x, 8x) the output size in both directions, the JPEG is decoded at 1/2 (1/4,
  1/8) scale by its own DCT scaling first (`reduced_scale`), which changes pixels by more than
  rounding (numbers in benchmarks/README.md) and is the only departure from the reference.

Normalisation constants: `luminet_jax.data.stats` (with their sources).
"""

import math

import tensorflow as tf

from luminet_jax.data import stats

try:  # TF must not reserve accelerator memory that JAX needs.
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # Devices were already initialised by an earlier import.
    pass

# The normalization constants (and their sources) live in `stats`, which needs no TensorFlow.
CIFAR100_MEAN, CIFAR100_STD = stats.CIFAR100_MEAN, stats.CIFAR100_STD
CIFAR10_MEAN, CIFAR10_STD = stats.CIFAR10_MEAN, stats.CIFAR10_STD
IMAGENET_MEAN, IMAGENET_STD = stats.IMAGENET_MEAN, stats.IMAGENET_STD
TINY_IMAGENET_MEAN, TINY_IMAGENET_STD = stats.TINY_IMAGENET_MEAN, stats.TINY_IMAGENET_STD

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


RESAMPLE_BLOCK = 8  # Output rows per small matrix product in `resample`.
# Decode windows are widened by this margin: libjpeg upsamples chroma at a decoded region's
# edge by replicating it, so a window edge (unless at the image's) changes its edge pixels (up to
# ~30 levels in the first or last column were measured); one pixel is enough, two is safe.
JPEG_MARGIN = 2
DCT_RATIOS = (1, 2, 4, 8)  # The reduced scales a JPEG can be decoded at (libjpeg DCT scaling).

# One axis of a resampling: output pixel i samples the input at `start + (i + 0.5) * step`
# (input pixel k spans [k, k + 1)), reading only input pixels in [lo, hi).
Axis = tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]


def _taps(out_size: int, axis: Axis) -> tuple[tf.Tensor, tf.Tensor]:
    """Which input pixels each block of RESAMPLE_BLOCK output pixels reads, and their weights.

    The filter is a triangle of radius max(step, 1) in input pixels: bilinear interpolation when
    enlarging, its antialiased form (the triangle stretched to the output spacing) when
    shrinking, as `tf.image.resize(method="bilinear", antialias=True)`. Input pixels outside
    [lo, hi) get no weight and each output pixel's weights are renormalized to sum to 1, as
    resizing the [lo, hi) crop alone does at its borders.

    Returns:
      (index (blocks, R) int32, weights (blocks, RESAMPLE_BLOCK, R) float32): output pixel
      b * RESAMPLE_BLOCK + i is sum_r weights[b, i, r] * input[index[b, r]]; R is the widest
      block's span. Rows past `out_size` (the last block's padding) are to be dropped.
    """
    start, step = tf.cast(axis[0], tf.float32), tf.cast(axis[1], tf.float32)
    lo, hi = tf.cast(axis[2], tf.int32), tf.cast(axis[3], tf.int32)
    blocks = -(-out_size // RESAMPLE_BLOCK)
    radius = tf.maximum(step, 1.0)
    sample = start + (tf.range(blocks * RESAMPLE_BLOCK, dtype=tf.float32) + 0.5) * step
    first = tf.clip_by_value(tf.cast(tf.math.ceil(sample - radius - 0.5), tf.int32), lo, hi - 1)
    last = tf.clip_by_value(tf.cast(tf.math.floor(sample + radius - 0.5), tf.int32), lo, hi - 1)
    begin = first[::RESAMPLE_BLOCK]  # Samples increase, so a block starts at its first's span.
    span = tf.reduce_max(last[RESAMPLE_BLOCK - 1 :: RESAMPLE_BLOCK] - begin) + 1
    index = begin[:, None] + tf.range(span)[None, :]
    offset = tf.cast(index, tf.float32)[:, None, :] + 0.5
    offset -= tf.reshape(sample, [blocks, RESAMPLE_BLOCK, 1])
    weights = tf.maximum(1.0 - tf.abs(offset) * (1.0 / radius), 0.0)
    weights = tf.where((index < hi)[:, None, :], weights, 0.0)
    weights /= tf.maximum(tf.reduce_sum(weights, axis=2, keepdims=True), 1e-30)
    return tf.minimum(index, hi - 1), weights


def _resample_rows(pixels: tf.Tensor, out_size: int, axis: Axis) -> tf.Tensor:
    """Resamples axis 0 of (H, M) pixels: (out_size, M) float32."""
    index, weights = _taps(out_size, axis)
    rows = tf.cast(tf.gather(pixels, index), tf.float32)  # (blocks, R, M)
    return tf.reshape(tf.matmul(weights, rows), [-1, tf.shape(pixels)[1]])[:out_size]


def resample(image: tf.Tensor, size: int, y: Axis, x: Axis) -> tf.Tensor:
    """Antialiased bilinear resampling of (H, W, 3) pixels to (size, size, 3) float32.

    `y` and `x` are (start, step, lo, hi) per axis (see `Axis`). A crop (top, left, h, w) resized
    to `size` is y = (top, h / size, top, top + h), x = (left, w / size, left, left + w), equal
    to `tf.image.resize(crop, (size, size), antialias=True)` within float rounding (both compute
    the same weights; here as two sets of small matrix products, RESAMPLE_BLOCK output rows
    each, about 1.4x faster per CPU core than that op's kernel on 500 x 375 photos' crops).
    """
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    rows = _resample_rows(tf.reshape(image, [height, width * 3]), size, y)  # (size, W * 3)
    cols = tf.transpose(tf.reshape(rows, [size, width, 3]), [1, 0, 2])
    out = _resample_rows(tf.reshape(cols, [width, size * 3]), size, x)  # (x, y * 3)
    return tf.transpose(tf.reshape(out, [size, size, 3]), [1, 0, 2])


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    """Rounds resampled pixels (weights >= 0 summing to 1, so within 0..255) to uint8."""
    return tf.cast(image + 0.5, tf.uint8)  # Casts truncate; two ops instead of round + clip.


def _needed(axis: Axis, size: int, limit: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The input range [first, stop) an axis reads: nonzero weights only, within [lo, hi)."""
    start, step, lo, hi = axis
    radius = tf.maximum(step, 1.0)
    first = tf.cast(tf.math.floor(start + 0.5 * step - radius - 0.5), tf.int32)
    stop = tf.cast(tf.math.ceil(start + (size - 0.5) * step + radius - 0.5), tf.int32) + 1
    return tf.maximum(first, tf.maximum(lo, 0)), tf.minimum(stop, tf.minimum(hi, limit))


def _shift(axis: Axis, origin: tf.Tensor, extent: tf.Tensor) -> Axis:
    """`axis` in the coordinates of a window [origin, origin + extent) of its input."""
    start, step, lo, hi = axis
    return (
        start - tf.cast(origin, tf.float32),
        step,
        tf.maximum(lo - origin, 0),
        tf.minimum(hi - origin, extent),
    )


def _resample_pixels(image: tf.Tensor, size: int, y: Axis, x: Axis) -> tf.Tensor:
    """`resample` of decoded pixels, reading only the window the output needs; uint8 out."""
    shape = tf.shape(image)
    (y0, y1), (x0, x1) = _needed(y, size, shape[0]), _needed(x, size, shape[1])
    window = tf.slice(image, [y0, x0, 0], [y1 - y0, x1 - x0, 3])
    return _to_uint8(resample(window, size, _shift(y, y0, y1 - y0), _shift(x, x0, x1 - x0)))


def reduced_scale(y: Axis, x: Axis) -> tf.Tensor:
    """Index into DCT_RATIOS of the scale a JPEG is decoded at: the largest r with step >= r.

    The step is the input pixels per output pixel, so the crop is at least r times the output
    size in both directions and still at least the output size once decoded at 1/r.
    """
    step = tf.minimum(tf.cast(y[1], tf.float32), tf.cast(x[1], tf.float32))
    return tf.reduce_sum(tf.cast(step >= tf.constant(DCT_RATIOS[1:], tf.float32), tf.int32))


def _resample_jpeg(
    encoded: tf.Tensor, shape: tf.Tensor, size: int, y: Axis, x: Axis, *, dct: bool = True
) -> tf.Tensor:
    """`resample` of a JPEG, decoding only the window (and scale) that the output needs."""

    def at_ratio(r):
        def decode_and_resample():
            axes, window = [], []
            for (start, step, lo, hi), limit in zip((y, x), (shape[0], shape[1])):
                # Coordinates of the image decoded at 1/r, whose pixel k covers [k r, (k + 1) r).
                scaled = (start / r, step / r, lo // r, (hi + r - 1) // r)
                scaled_limit = (limit + r - 1) // r
                first, stop = _needed(scaled, size, scaled_limit)
                origin = tf.maximum(first - JPEG_MARGIN, 0)
                extent = tf.minimum(stop + JPEG_MARGIN, scaled_limit) - origin
                axes.append(_shift(scaled, origin, extent))
                window.append((origin, extent))
            crop_window = tf.stack([window[0][0], window[1][0], window[0][1], window[1][1]])
            pixels = tf.image.decode_and_crop_jpeg(encoded, crop_window, channels=3, ratio=r)
            return _to_uint8(resample(pixels, size, *axes))

        return decode_and_resample

    if not dct:
        return at_ratio(1)()
    return tf.switch_case(reduced_scale(y, x), [at_ratio(r) for r in DCT_RATIOS])


def _crop_resize_uint8(image, size, region_fn, *, encoded: bool, dct: bool = True):
    """uint8 (size, size, 3) from pixels or encoded bytes; `region_fn(height, width) -> (y, x)`.

    Encoded JPEGs are read partially (`_resample_jpeg`); other encodings are decoded whole.
    """

    def from_pixels(pixels):
        shape = tf.shape(pixels)
        return _resample_pixels(pixels, size, *region_fn(shape[0], shape[1]))

    if not encoded:
        return from_pixels(image)

    def from_jpeg():
        shape = tf.image.extract_jpeg_shape(image)
        return _resample_jpeg(image, shape, size, *region_fn(shape[0], shape[1]), dct=dct)

    def from_other():
        pixels = tf.io.decode_image(image, channels=3, expand_animations=False)
        return from_pixels(tf.ensure_shape(pixels, [None, None, 3]))

    return tf.cond(tf.io.is_jpeg(image), from_jpeg, from_other)


def imagenet_train_uint8(
    image: tf.Tensor, seed: tf.Tensor, *, size: int = 224, encoded: bool = False, dct: bool = True
) -> tf.Tensor:
    """`imagenet_train` (same box, same flip for the same seed), uint8 out, fast.

    Args:
      image: uint8 (H, W, 3) pixels, or (`encoded=True`) the encoded image (a JPEG is decoded
        partially, at a reduced scale where the crop allows it; other formats whole).
      seed: stateless seed (2,).
      size: output height and width.
      dct: allow the reduced-scale JPEG decode (False: pixels within rounding of
        `imagenet_train`).
    """
    box_seed, flip_seed = split_seed(seed, 2)

    def region(height, width):
        box = random_resized_crop_box(height, width, box_seed)
        top, left, h, w = box[0], box[1], box[2], box[3]
        y = (tf.cast(top, tf.float32), tf.cast(h, tf.float32) / size, top, top + h)
        x = (tf.cast(left, tf.float32), tf.cast(w, tf.float32) / size, left, left + w)
        return y, x

    image = _crop_resize_uint8(image, size, region, encoded=encoded, dct=dct)
    return tf.ensure_shape(random_flip(image, flip_seed), [size, size, 3])


def imagenet_eval_uint8(
    image: tf.Tensor,
    *,
    size: int = 224,
    resize_size: int | None = None,
    encoded: bool = False,
    dct: bool = True,
) -> tf.Tensor:
    """`imagenet_eval` (resize the shorter side, center crop), uint8 out, fast (same arguments)."""
    resize_size = resize_size or int(round(size * 256 / 224))

    def region(height, width):
        shape = tf.cast(tf.stack([height, width]), tf.float32)
        scale = resize_size / tf.reduce_min(shape)
        new_hw = tf.where(
            shape <= tf.reduce_min(shape), resize_size, tf.cast(shape * scale, tf.int32)
        )
        axes = []
        for dim, new, limit in ((0, new_hw[0], height), (1, new_hw[1], width)):
            step = shape[dim] / tf.cast(new, tf.float32)  # As resizing the whole image to new_hw.
            first = tf.round(tf.cast(new - size, tf.float32) / 2)  # The center crop's offset.
            axes.append((first * step, step, 0, limit))
        return tuple(axes)

    image = _crop_resize_uint8(image, size, region, encoded=encoded, dct=dct)
    return tf.ensure_shape(image, [size, size, 3])


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
    """float32 `(image / 255 - mean) / std`, per channel (image (..., W, C) in 0..255).

    The constants are tiled to whole rows of W * C values: TensorFlow broadcasts a (C,) vector
    over the innermost dimension element by element (5x slower here), a row at full speed. The
    arithmetic, and so every value, is the same.
    """
    shape = tf.shape(image)
    rows = tf.reshape(tf.cast(image, tf.float32), [-1, shape[-2] * shape[-1]])
    mean_row = tf.tile(tf.constant(mean, tf.float32), [shape[-2]])
    std_row = tf.tile(tf.constant(std, tf.float32), [shape[-2]])
    return tf.reshape((rows / 255.0 - mean_row) / std_row, shape)
