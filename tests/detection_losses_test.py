"""RPN and RoI head losses against loop references of detectron2's formulas, float64,
and the 8-device shard_map losses and gradients against one device."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from luminet_jax import sharding
from luminet_jax.detection import losses


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def boxes(rng, shape):
    xy = rng.uniform(0, 50, (*shape, 2))
    return np.concatenate([xy, xy + rng.uniform(2, 30, (*shape, 2))], axis=-1)


def encode(g, a, w):
    aw, ah, gw, gh = a[2] - a[0], a[3] - a[1], g[2] - g[0], g[3] - g[1]
    return np.array(
        [
            w[0] * ((g[0] + gw / 2) - (a[0] + aw / 2)) / aw,
            w[1] * ((g[1] + gh / 2) - (a[1] + ah / 2)) / ah,
            w[2] * math.log(gw / aw),
            w[3] * math.log(gh / ah),
        ]
    )


def rpn_case(seed, b=8, n=30):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, n)) * 3
    deltas = rng.normal(size=(b, n, 4))
    anchors = boxes(rng, (n,))
    labels = rng.integers(-1, 2, (b, n))
    gt = boxes(rng, (b, n))
    gt[0] = 0.0  # an image without gt: zero boxes, no positives
    labels[0] = np.where(labels[0] == 1, 0, labels[0])
    return logits, deltas, anchors, labels, gt


def ref_rpn(logits, deltas, anchors, labels, gt, per_image, w=(1, 1, 1, 1)):
    cls = loc = 0.0
    for i in range(logits.shape[0]):
        for j in range(logits.shape[1]):
            if labels[i, j] < 0:
                continue
            x, z = logits[i, j], float(labels[i, j])
            cls += -(
                z * math.log(1 / (1 + math.exp(-x)))
                + (1 - z) * math.log(1 - 1 / (1 + math.exp(-x)))
            )
            if labels[i, j] == 1:
                loc += np.abs(deltas[i, j] - encode(gt[i, j], anchors[j], w)).sum()
    norm = per_image * logits.shape[0]
    return cls / norm, loc / norm


@pytest.mark.integration  # heavy: the second tier
def test_rpn_losses_match_reference():
    logits, deltas, anchors, labels, gt = rpn_case(0)
    got = losses.rpn_losses(logits, deltas, anchors, labels, gt, batch_size_per_image=16)
    want = ref_rpn(logits, deltas, anchors, labels, gt, 16)
    np.testing.assert_allclose(float(got["loss_rpn_cls"]), want[0], rtol=1e-6)
    np.testing.assert_allclose(float(got["loss_rpn_loc"]), want[1], rtol=1e-6)
    grads = jax.grad(lambda d: losses.rpn_losses(logits, d, anchors, labels, gt)["loss_rpn_loc"])(
        jnp.asarray(deltas)
    )
    assert np.isfinite(np.asarray(grads)).all() and not np.asarray(grads)[labels != 1].any()


def roi_case(seed, b=8, s=12, k=5, agnostic=False):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, s, k + 1)) * 2
    deltas = rng.normal(size=(b, s, 4 if agnostic else 4 * k))
    props = boxes(rng, (b, s))
    classes = rng.integers(0, k + 1, (b, s))
    gt = boxes(rng, (b, s))
    gt[classes == k] = 0.0  # background slots carry no meaningful gt
    valid = rng.uniform(size=(b, s)) < 0.8
    props[~valid] = 0.0
    valid[1] = False  # an image with no sampled RoI
    return logits, deltas, props, classes, gt, valid


def ref_roi(logits, deltas, props, classes, gt, valid, k, w=(10, 10, 5, 5)):
    cls = reg = 0.0
    count = 0
    for i in range(logits.shape[0]):
        for j in range(logits.shape[1]):
            if not valid[i, j]:
                continue
            count += 1
            row = logits[i, j]
            cls += math.log(np.exp(row - row.max()).sum()) + row.max() - row[classes[i, j]]
            c = classes[i, j]
            if c < k:
                d = deltas[i, j] if deltas.shape[-1] == 4 else deltas[i, j, 4 * c : 4 * c + 4]
                reg += np.abs(d - encode(gt[i, j], props[i, j], w)).sum()
    return cls / max(count, 1), reg / max(count, 1)


@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.integration  # heavy: the second tier
def test_fast_rcnn_losses_match_reference(agnostic):
    args = roi_case(1, agnostic=agnostic)
    got = losses.fast_rcnn_losses(*args, num_classes=5)
    want = ref_roi(*args, 5)
    np.testing.assert_allclose(float(got["loss_cls"]), want[0], rtol=1e-6)
    np.testing.assert_allclose(float(got["loss_box_reg"]), want[1], rtol=1e-6)
    empty = losses.fast_rcnn_losses(*args[:5], np.zeros_like(args[5]), num_classes=5)
    assert float(empty["loss_cls"]) == 0.0 and float(empty["loss_box_reg"]) == 0.0


def test_smooth_l1_beta():
    x = jnp.asarray([-2.0, -0.25, 0.0, 0.5, 3.0])
    np.testing.assert_array_equal(losses.smooth_l1(x, 0.0), np.abs(np.asarray(x)))
    np.testing.assert_allclose(
        losses.smooth_l1(x, 1.0), [1.5, 0.03125, 0.0, 0.125, 2.5], rtol=1e-15
    )


@pytest.mark.integration  # heavy: the second tier
def test_losses_sharded_equal_single_device_incl_gradients():
    rpn_logits, rpn_deltas, anchors, rpn_labels, rpn_gt = rpn_case(2)
    roi = list(roi_case(3))
    roi[5][4:] = False  # uneven valid counts across shards (several shards empty)
    n_dev = jax.device_count()
    assert rpn_logits.shape[0] == roi[0].shape[0] == n_dev

    def loss_fn(logits, deltas, labels, gt, roi_logits, roi_deltas, props, cls, gtb, ok, axis):
        a = losses.rpn_losses(logits, deltas, anchors, labels, gt, batch_size_per_image=16)
        b = losses.fast_rcnn_losses(
            roi_logits, roi_deltas, props, cls, gtb, ok, num_classes=5, axis_name=axis
        )
        parts = {**a, **b}
        if axis is not None:
            parts = jax.lax.pmean(parts, axis)  # what the train step does with shard totals
        return sum(parts.values()), parts

    def sharded(*xs):
        f = jax.shard_map(
            functools.partial(loss_fn, axis="data"),
            mesh=sharding.make_mesh(),
            in_specs=(P("data"),) * 10,
            out_specs=(P(), P()),
        )
        return f(*xs)

    inputs = (rpn_logits, rpn_deltas, rpn_labels, rpn_gt, *roi)
    grad = functools.partial(jax.value_and_grad, argnums=(0, 1, 4, 5), has_aux=True)
    (loss1, parts1), grads1 = jax.jit(grad(functools.partial(loss_fn, axis=None)))(*inputs)
    (loss8, parts8), grads8 = jax.jit(grad(sharded))(*inputs)
    np.testing.assert_allclose(float(loss8), float(loss1), rtol=1e-12)
    for key in parts1:
        np.testing.assert_allclose(float(parts8[key]), float(parts1[key]), rtol=1e-12)
    for g8, g1 in zip(grads8, grads1):
        np.testing.assert_allclose(np.asarray(g8), np.asarray(g1), rtol=1e-10, atol=1e-14)
        assert np.abs(np.asarray(g1)).max() > 0


def test_fast_rcnn_metrics_match_reference_and_shards():
    logits, _, _, classes, _, valid = roi_case(4, k=3)
    logits[0, :6, 3] = 9.0  # some confident background predictions
    got = losses.fast_rcnn_metrics(logits, classes, valid)
    pred = logits.argmax(-1)
    fg = valid & (classes < 3)
    want = {
        "cls_accuracy": (pred == classes)[valid].mean(),
        "fg_cls_accuracy": (pred == classes)[fg].mean(),
        "false_negative": (pred == 3)[fg].mean(),
        "num_fg_samples": fg.sum() / 8,
        "num_bg_samples": (valid & (classes == 3)).sum() / 8,
    }
    for key, value in want.items():
        np.testing.assert_allclose(float(got[key]), value, rtol=1e-6)
    sharded = jax.jit(
        jax.shard_map(
            functools.partial(losses.fast_rcnn_metrics, axis_name="data"),
            mesh=sharding.make_mesh(), in_specs=(P("data"),) * 3, out_specs=P(),
        )
    )(logits, classes, valid)  # fmt: skip
    for key, value in want.items():
        np.testing.assert_allclose(float(sharded[key]), value, rtol=1e-6)
