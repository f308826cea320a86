"""Tests for luminet_jax.data.augment and .autoaugment (TensorFlow ops on single examples)."""

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

tf = pytest.importorskip("tensorflow")

from luminet_jax.data import augment, autoaugment  # noqa: E402

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)


def _seed(i):
    return tf.constant([1234, i], tf.int64)


def test_constants_are_the_reference_values():
    assert augment.CIFAR100_MEAN == (0.5071, 0.4867, 0.4408)
    assert augment.CIFAR100_STD == (0.2675, 0.2565, 0.2761)
    assert augment.IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert augment.IMAGENET_STD == (0.229, 0.224, 0.225)
    assert augment.CIFAR10_MEAN == (0.4914, 0.4822, 0.4465)
    assert augment.CIFAR10_STD == (0.2470, 0.2435, 0.2616)


def test_normalize():
    pixels = np.array([[[0, 128, 255]]], np.uint8)
    out = augment.normalize(pixels, augment.CIFAR100_MEAN, augment.CIFAR100_STD).numpy()
    expected = (np.array([0, 128, 255]) / 255 - np.array(augment.CIFAR100_MEAN)) / np.array(
        augment.CIFAR100_STD
    )
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-5)


def test_pad_and_crop_zero_padding():
    ones = np.full((32, 32, 3), 255, np.uint8)
    out = augment.pad_and_crop(ones, tf.constant([0, 8]), 4).numpy()
    assert out.shape == (32, 32, 3)
    assert np.all(out[:4] == 0) and np.all(out[:, 28:] == 0)  # padding is zeros
    assert np.all(out[4:, :28] == 255)
    centred = augment.pad_and_crop(IMAGE, tf.constant([4, 4]), 4).numpy()
    np.testing.assert_array_equal(centred, IMAGE)
    shifted = augment.pad_and_crop(IMAGE, tf.constant([6, 1]), 4).numpy()
    np.testing.assert_array_equal(shifted[:-2, 3:], IMAGE[2:, :-3])


def test_cifar_train_crop_and_flip():
    outs = [augment.cifar_train(IMAGE, _seed(i)).numpy() for i in range(24)]
    again = augment.cifar_train(IMAGE, _seed(3)).numpy()
    np.testing.assert_array_equal(outs[3], again)  # stateless: same seed, same output
    padded = np.pad(IMAGE, ((4, 4), (4, 4), (0, 0)))
    crops = {(dy, dx): padded[dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)}
    flips = 0
    for out in outs:
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
        plain = [k for k, c in crops.items() if np.array_equal(out, c)]
        mirrored = [k for k, c in crops.items() if np.array_equal(out, c[:, ::-1])]
        assert plain or mirrored  # every output is one of the 81 crops, maybe mirrored
        flips += bool(mirrored) and not plain
    assert 0 < flips < len(outs)


def test_random_flip_is_a_mirror():
    flipped = [augment.random_flip(IMAGE, _seed(i)).numpy() for i in range(16)]
    for out in flipped:
        assert np.array_equal(out, IMAGE) or np.array_equal(out, IMAGE[:, ::-1])


def test_random_resized_crop_box_follows_torchvision_bounds():
    for i in range(40):
        top, left, h, w = augment.random_resized_crop_box(300, 200, _seed(i)).numpy()
        assert 0 <= top <= 300 - h and 0 <= left <= 200 - w
        assert 0.08 * 0.9 <= h * w / (300 * 200) <= 1.0
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # A 4x200 strip fits no candidate box: the fallback is the central box with ratio 4/3.
    np.testing.assert_array_equal(
        augment.random_resized_crop_box(4, 200, _seed(0)).numpy(), [0, 97, 4, 5]
    )


def test_imagenet_train_and_eval_shapes():
    image = RNG.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    out = augment.imagenet_train(image, _seed(0), size=56).numpy()
    assert out.shape == (56, 56, 3) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 255.5
    evaluated = augment.imagenet_eval(image, size=56).numpy()
    assert evaluated.shape == (56, 56, 3)


def test_imagenet_eval_center_crop():
    # The shorter side already equals 256, so the resize is the identity: a pure center crop.
    image = RNG.integers(0, 256, (256, 320, 3), dtype=np.uint8)
    out = augment.imagenet_eval(image, size=224).numpy()
    np.testing.assert_allclose(out, image[16:240, 48:272], atol=1e-3)


def test_resize_to():
    np.testing.assert_array_equal(augment.resize_to(IMAGE, 32).numpy(), IMAGE)
    assert augment.resize_to(IMAGE, 16).numpy().shape == (16, 16, 3)


@pytest.mark.parametrize(
    "name, pil_fn",
    [
        ("Equalize", ImageOps.equalize),
        ("AutoContrast", ImageOps.autocontrast),
        ("Invert", ImageOps.invert),
        ("Sharpness", lambda im: ImageEnhance.Sharpness(im).enhance(1.9)),
        ("Posterize", lambda im: ImageOps.posterize(im, 4)),
        ("Solarize", lambda im: ImageOps.solarize(im, 255.0 * (1 - 5 / 9))),
    ],
)
def test_autoaugment_ops_match_pil(name, pil_fn):
    image = (IMAGE // 2 + 40).astype(np.uint8)  # a narrower range, so AutoContrast acts
    bins = {"Sharpness": 9, "Posterize": 9, "Solarize": 5}
    out = autoaugment.apply_op(tf.cast(image, tf.float32), name, bins.get(name), 1.0).numpy()
    expected = np.asarray(pil_fn(Image.fromarray(image)), np.float32)
    np.testing.assert_allclose(np.round(out), expected, atol=1.0)


def test_autoaugment_policy_shape_and_determinism():
    fn = autoaugment.cifar10_policy  # eager: runs only the chosen branch
    outs = [fn(IMAGE, _seed(i)).numpy() for i in range(6)]
    assert all(o.shape == (32, 32, 3) and o.dtype == np.uint8 for o in outs)
    np.testing.assert_array_equal(fn(IMAGE, _seed(2)).numpy(), outs[2])
    assert any(not np.array_equal(o, IMAGE) for o in outs)
    assert len(autoaugment.CIFAR10_POLICY) == 25


# --- The fast ImageNet path (uint8 out): equal to the reference within rounding. ---


def _axis(start, extent, size, lo=None, hi=None):
    lo = start if lo is None else lo
    hi = start + extent if hi is None else hi
    return (float(start), extent / size, lo, hi)


@pytest.mark.parametrize(
    "height, width, size",
    [(300, 280, 56), (375, 500, 56), (60, 400, 56), (30, 20, 56), (56, 56, 56), (3, 97, 16)],
)
def test_resample_equals_tf_antialiased_resize(height, width, size):
    image = RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
    want = tf.image.resize(image, (size, size), method="bilinear", antialias=True).numpy()
    got = augment.resample(image, size, _axis(0, height, size), _axis(0, width, size)).numpy()
    assert got.shape == (size, size, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=0.01)  # float rounding (0.005 measured)
    # A crop read in place (bounds [lo, hi)) equals resizing the sliced crop.
    big = RNG.integers(0, 256, (height + 20, width + 30, 3), dtype=np.uint8)
    crop = big[7 : 7 + height, 11 : 11 + width]
    want = tf.image.resize(crop, (size, size), method="bilinear", antialias=True).numpy()
    got = augment.resample(big, size, _axis(7, height, size), _axis(11, width, size)).numpy()
    np.testing.assert_allclose(got, want, atol=0.01)


@pytest.fixture(scope="module")
def imagenet_like(shared_data):
    """24 of the ImageNet-like JPEGs of DESIGN.md section 9 (500 x 375, quality 90)."""
    from benchmarks import data_bench

    return data_bench.imagenet_like_jpegs(shared_data / data_bench.ARCHIVE.name, count=24)


@pytest.mark.integration  # heavy: the second tier
def test_imagenet_uint8_within_one_level_of_the_reference_on_real_jpegs(imagenet_like):
    # The fused path (header -> box -> partial decode -> `resample`) against today's float path
    # (whole decode -> slice -> tf.image.resize(antialias=True)), both rounded to uint8.
    differing, total = 0, 0
    for i, data in enumerate(imagenet_like):
        decoded = tf.io.decode_jpeg(data, channels=3)
        seed = _seed(i)
        want = np.round(augment.imagenet_train(decoded, seed, size=224).numpy())
        fused = augment.imagenet_train_uint8(tf.constant(data), seed, size=224, encoded=True)
        pixels = augment.imagenet_train_uint8(decoded, seed, size=224)
        for got in (fused.numpy(), pixels.numpy()):
            assert got.dtype == np.uint8 and got.shape == (224, 224, 3)
            diff = np.abs(got.astype(np.float64) - want)
            assert diff.max() <= 1, i
            differing, total = differing + np.count_nonzero(diff), total + diff.size
        want = np.round(augment.imagenet_eval(decoded, size=224).numpy())
        got = augment.imagenet_eval_uint8(tf.constant(data), size=224, encoded=True).numpy()
        assert np.abs(got.astype(np.float64) - want).max() <= 1, i
    # Off by one only where the reference sits within float rounding of a half level.
    assert differing / total < 1e-3


def test_jpeg_windows_decode_like_a_whole_decode(imagenet_like):
    # libjpeg replicates chroma at a decoded region's edge; the JPEG_MARGIN pixels around a
    # window make every pixel inside it equal to a whole decode's, at every DCT scale.
    rng = np.random.default_rng(0)
    for data in imagenet_like[:8]:
        for ratio in augment.DCT_RATIOS[:3]:
            whole = tf.io.decode_jpeg(data, channels=3, ratio=ratio).numpy()
            height, width = whole.shape[:2]
            top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
            h, w = rng.integers(4, height - top), rng.integers(4, width - left)
            m = augment.JPEG_MARGIN
            y0, x0 = max(top - m, 0), max(left - m, 0)
            y1, x1 = min(top + h + m, height), min(left + w + m, width)
            window = [y0, x0, y1 - y0, x1 - x0]
            part = tf.image.decode_and_crop_jpeg(data, window, channels=3, ratio=ratio).numpy()
            np.testing.assert_array_equal(
                part[top - y0 : top - y0 + h, left - x0 : left - x0 + w],
                whole[top : top + h, left : left + w],
            )


def test_reduced_scale_decode_only_from_twice_the_output_size(imagenet_like):
    def index(step_y, step_x):
        return int(augment.reduced_scale((0.0, step_y, 0, 1), (0.0, step_x, 0, 1)))

    assert [index(s, 9.0) for s in (1.0, 1.99, 2.0, 3.9, 4.0, 7.9, 8.0, 20.0)] == [
        0, 0, 1, 1, 2, 2, 3, 3,
    ]  # fmt: skip
    assert index(9.0, 1.5) == 0  # Both directions must allow it.
    # 224 from 500 x 375 photos: no crop is 2 x 224 tall, so no reduced-scale decode.
    for i, data in enumerate(imagenet_like[:6]):
        data = tf.constant(data)
        np.testing.assert_array_equal(
            augment.imagenet_train_uint8(data, _seed(i), size=224, encoded=True).numpy(),
            augment.imagenet_train_uint8(data, _seed(i), size=224, encoded=True, dct=False),
        )
    # At 64 most crops are decoded at 1/2 or 1/4 scale. The pixels differ by more than
    # rounding (measured on 300 crops: mean 2.3 levels, PSNR 37 dB against the full decode);
    # bounds with margin:
    squared, absolute, reduced = [], [], 0
    for i, data in enumerate(imagenet_like):
        data = tf.constant(data)
        fast = augment.imagenet_train_uint8(data, _seed(i), size=64, encoded=True).numpy()
        full = augment.imagenet_train_uint8(data, _seed(i), size=64, encoded=True, dct=False)
        diff = fast.astype(np.float64) - full.numpy()
        reduced += bool(np.any(diff))
        squared.append(np.mean(diff**2))
        absolute.append(np.mean(np.abs(diff)))
    assert reduced >= len(imagenet_like) // 2
    assert 10 * np.log10(255**2 / np.mean(squared)) > 33 and np.mean(absolute) < 4
