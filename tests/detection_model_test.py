"""Faster R-CNN + FPN model: shapes, frozen parts, training signal, inference limits, and the
8-device data-parallel loss and gradients against one device. Tiny sizes throughout."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tiny_detector
from jax.sharding import PartitionSpec as P
from tiny_detector import NUM_CLASSES, SIZE, TINY

from luminet_jax import sharding
from luminet_jax.detection import backbone, fpn, rcnn

# Compiling the detector's train step takes minutes on 2 shared CPU cores (one compilation
# is shared by the tests of this module), so the tests that run it are slow.
SLOW = pytest.mark.slow
_batch = tiny_detector.batch


@pytest.fixture(scope="module")
def model():
    return rcnn.get_detector("faster_rcnn_r18_fpn", **TINY)


@pytest.fixture(scope="module")
def variables(model):
    return rcnn.init_variables(model, 0)


def _loss(model, params, frozen, batch, key, axis_name=None):
    losses, aux = rcnn.train_forward(
        model, {"params": params, "frozen": frozen}, batch, key, axis_name=axis_name
    )
    return rcnn.total_loss(losses), (losses, aux)


@pytest.fixture(scope="module")
def grad_fn(model):
    # One compiled function for all tests: gradients w.r.t. params and the frozen collection.
    return jax.jit(jax.value_and_grad(functools.partial(_loss, model), (0, 1), has_aux=True))


@pytest.mark.parametrize("depth", [18, 50])
def test_backbone_fpn_shapes_and_collections(depth):
    m = fpn.FPN(bottom_up=backbone.ResNet(depth=depth, stem_channels=8), out_channels=16)
    v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((2, 64, 96, 3))))
    assert set(v) == {"params", "frozen"}
    assert set(v["frozen"]["bottom_up"]) >= {"stem", "res2_0", "res3_0"}
    # Frozen stages keep their kernels out of "params"; res3..res5 train.
    trained = set(v["params"]["bottom_up"])
    assert not any(k.startswith(("stem", "res2")) for k in trained)
    assert {"res3_0", "res4_0", "res5_0"} <= trained
    out = jax.eval_shape(
        lambda: m.apply(jax.tree.map(jnp.zeros_like, v), jnp.zeros((2, 64, 96, 3)))
    )
    # p6 takes every other pixel of p5: ceil(p5 / 2) (96 / 32 = 3 -> 2).
    assert [o.shape for o in out] == [(2, -(-64 // s), -(-96 // s), 16) for s in fpn.STRIDES]


@pytest.mark.integration  # heavy: the second tier
def test_frozen_batchnorm_is_the_affine_map():
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
    frozen = {
        "weight": jnp.asarray([1.0, 2.0, 0.5]),
        "bias": jnp.asarray([0.0, 1.0, -1.0]),
        "running_mean": jnp.asarray([0.1, -0.2, 0.3]),
        "running_var": jnp.asarray([1.0, 4.0, 0.25]),
    }
    y = backbone.FrozenBatchNorm().apply({"frozen": frozen}, x)
    want = (x - frozen["running_mean"]) / np.sqrt(frozen["running_var"] + 1e-5)
    want = want * frozen["weight"] + frozen["bias"]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    v = backbone.FrozenBatchNorm().init(jax.random.key(0), x)  # identity at init
    np.testing.assert_allclose(backbone.FrozenBatchNorm().apply(v, x), x, rtol=1e-6)


@SLOW
def test_train_forward_keys_shapes_and_finite(model, variables, grad_fn):
    batch = _batch(2)
    (total, (losses, aux)), _ = grad_fn(
        variables["params"], variables["frozen"], batch, jax.random.key(1)
    )
    assert set(losses) == set(rcnn.LOSS_KEYS)
    assert all(np.isfinite(float(v)) for v in losses.values())
    s = TINY["roi_batch_size_per_image"]
    assert aux["rois"].shape == (2, s, 4)
    assert aux["class_logits"].shape == (2, s, NUM_CLASSES + 1)
    assert aux["box_deltas"].shape == (2, s, 4 * NUM_CLASSES)
    assert aux["roi_valid"].shape == aux["roi_classes"].shape == (2, s)
    valid, classes, fg = map(
        np.asarray, (aux["roi_valid"], aux["roi_classes"], aux["roi_foreground"])
    )
    assert valid.all()  # enough proposals for every slot
    assert ((classes < NUM_CLASSES) == fg).all()  # foreground = a real class, else background
    assert fg.sum(axis=1).max() <= s // 4
    # The teacher path on the same RoIs reproduces the student's logits with equal weights.
    t_logits = rcnn.roi_class_logits(model, variables, batch["image"], aux["rois"])
    np.testing.assert_allclose(t_logits, aux["class_logits"], rtol=1e-4, atol=1e-5)


@SLOW
def test_frozen_parts_have_zero_gradient_and_do_not_change(variables, grad_fn):
    batch = _batch(2)
    params, frozen = variables["params"], variables["frozen"]
    _, (g_params, g_frozen) = grad_fn(params, frozen, batch, jax.random.key(1))
    for name in ("stem", "res2_0", "res2_1"):
        for leaf in jax.tree.leaves(g_frozen["backbone"]["bottom_up"][name]):
            assert not np.any(np.asarray(leaf)), name
    assert any(np.any(np.asarray(x)) for x in jax.tree.leaves(g_params["backbone"]["bottom_up"]))
    # SGD with weight decay updates only "params"; the frozen collection is never its input.
    tx = optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.1, momentum=0.9))
    opt_state = tx.init(params)
    updates, _ = tx.update(g_params, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    assert not jax.tree_util.tree_all(
        jax.tree.map(lambda a, b: bool(jnp.all(a == b)), params, new_params)
    )
    flat = jax.tree_util.tree_flatten_with_path(new_params)[0]
    assert not any("stem" in str(p) or "res2_" in str(p) for p, _ in flat)


@SLOW
def test_loss_decreases_on_a_fixed_batch(variables, grad_fn):
    batch = _batch(2)
    params, frozen = variables["params"], variables["frozen"]
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.02, momentum=0.9))
    opt_state = tx.init(params)
    key = jax.random.key(3)
    history = []
    for _ in range(12):
        (total, _), grads = grad_fn(params, frozen, batch, key)
        history.append(float(total))
        updates, opt_state = tx.update(grads[0], opt_state, params)
        params = optax.apply_updates(params, updates)
    assert all(np.isfinite(history))
    assert history[-1] < 0.5 * history[0], history


@SLOW
def test_inference_limits(model, variables):
    batch = _batch(2)
    det = jax.jit(functools.partial(rcnn.predict, model))(variables, batch)
    assert det["boxes"].shape == (2, 100, 4)
    assert det["scores"].shape == det["classes"].shape == det["valid"].shape == (2, 100)
    valid = np.asarray(det["valid"])
    scores = np.asarray(det["scores"])
    assert valid.sum(axis=1).max() <= 100
    assert valid.sum() > 0
    assert (scores[valid] > 0.05).all()
    assert np.all(np.diff(np.where(valid, scores, -1), axis=1) <= 0)  # descending, padding last
    classes = np.asarray(det["classes"])
    assert ((classes[valid] >= 0) & (classes[valid] < NUM_CLASSES)).all()
    boxes = np.asarray(det["boxes"])[valid]
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= SIZE).all()
    # Image 1 is 60 wide: its boxes are clipped there.
    assert (np.asarray(det["boxes"])[1][valid[1]][:, [0, 2]] <= 60).all()


@pytest.mark.slow  # two more compilations of the train step (B=8, 1 and 8 devices)
def test_eight_devices_equal_one(model, variables, grad_fn):
    batch = _batch(8, seed=1)
    params, frozen = variables["params"], variables["frozen"]
    key = jax.random.key(5)
    (loss1, (parts1, aux1)), (grads1, _) = grad_fn(params, frozen, batch, key)

    def shard_fn(params, frozen, batch, key):
        def global_loss(p):
            total, (parts, aux) = _loss(model, p, frozen, batch, key, axis_name="data")
            return jax.lax.pmean(total, "data"), (jax.lax.pmean(parts, "data"), aux)

        (loss, (parts, aux)), grads = jax.value_and_grad(global_loss, has_aux=True)(params)
        return loss, parts, (aux["rois"], aux["roi_classes"], aux["roi_valid"]), grads

    mesh = sharding.make_mesh()
    sharded = jax.jit(
        jax.shard_map(
            shard_fn,
            mesh=mesh,
            in_specs=(P(), P(), P("data"), P()),
            out_specs=(P(), P(), (P("data"),) * 3, P()),
        )
    )
    loss8, parts8, rois8, grads8 = sharded(params, frozen, batch, key)
    # The same samples (integers exactly; boxes to float32 rounding of the per-shard convs).
    np.testing.assert_array_equal(rois8[1], aux1["roi_classes"])
    np.testing.assert_array_equal(rois8[2], aux1["roi_valid"])
    np.testing.assert_allclose(rois8[0], aux1["rois"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    for k in rcnn.LOSS_KEYS:
        np.testing.assert_allclose(parts8[k], parts1[k], rtol=1e-5, atol=1e-7)
    for a, b in zip(jax.tree.leaves(grads8), jax.tree.leaves(grads1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)


@pytest.mark.slow  # two compilations of the full train step
def test_train_step_sharded_equals_one_device(model, variables):
    from luminet_jax import state as state_lib
    from luminet_jax.detection import steps

    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.01, momentum=0.9))
    make = lambda: state_lib.create_train_state(  # noqa: E731  (copies: the step donates)
        jax.tree.map(jnp.copy, {"params": variables["params"], "batch_stats": variables["frozen"]}),
        tx,
    )
    batch = _batch(8, seed=2)
    one, m1 = jax.jit(steps.make_train_step(model, tx, seed=3))(make(), None, batch)
    step8 = sharding.shard_train_step(
        steps.make_train_step(model, tx, axis_name="data", seed=3), sharding.make_mesh()
    )
    eight, m8 = step8(make(), None, batch)
    assert int(eight.step) == 1
    for k in ("loss", *rcnn.LOSS_KEYS, "fast_rcnn/cls_accuracy", "grad_norm"):
        np.testing.assert_allclose(m8[k], m1[k], rtol=1e-4, atol=1e-6, err_msg=k)
    for a, b in zip(jax.tree.leaves(eight.params), jax.tree.leaves(one.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    chex_equal = jax.tree.map(
        lambda a, b: bool(np.array_equal(a, b)), eight.batch_stats, make().batch_stats
    )
    assert all(jax.tree.leaves(chex_equal))  # the frozen collection is untouched
