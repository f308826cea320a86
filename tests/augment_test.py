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
