"""RoI-logit distillation in the detection step (`detection.distill`): the teacher's RPN is never
run, its logits carry no gradient, it never enters the state, the distiller sees only valid
RoIs, and 8 devices equal 1. Tiny detectors; the compiled checks are slow (minutes on CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tiny_detector
from tiny_detector import TINY

from luminet_jax import distillers, sharding
from luminet_jax import state as state_lib
from luminet_jax.detection import distill, rcnn

TX = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.01, momentum=0.9))


_batch = tiny_detector.batch


@pytest.fixture(scope="module")
def models():
    student = rcnn.get_detector("faster_rcnn_r18_fpn", **TINY)
    teacher = rcnn.get_detector("faster_rcnn_r18_fpn", **{**TINY, "fc_dim": 48})
    return student, teacher


def _without_rpn(variables):
    """The teacher's variables with its RPN head removed: a step that ran it would fail."""
    return {
        col: {k: v for k, v in tree.items() if k != "proposal_generator"}
        for col, tree in variables.items()
    }


def _state(variables):
    v = jax.tree.map(jnp.copy, variables)  # copies: the step donates its state
    return state_lib.create_train_state({"params": v["params"], "batch_stats": v["frozen"]}, TX)


def _step(models, name, axis_name=None, **hparams):
    student, teacher = models
    distiller = distillers.get_distiller(name, ce_weight=0.0, **hparams)
    return distill.make_train_step(
        student, teacher, distiller, TX, steps_per_epoch=10, axis_name=axis_name, seed=3
    )


@pytest.mark.integration  # heavy: the second tier
def test_step_traces_without_the_teacher_rpn_and_keeps_the_teacher_out_of_the_state(models):
    student, teacher = models
    s_vars = rcnn.abstract_variables(student)
    t_vars = _without_rpn(rcnn.abstract_variables(teacher))
    assert "proposal_generator" in s_vars["params"]
    state = jax.eval_shape(_state, s_vars)
    new_state, metrics = jax.eval_shape(_step(models, "luminet"), state, t_vars, _batch(2))
    assert jax.tree.structure(new_state) == jax.tree.structure(state)  # no teacher inside
    assert {"distill/loss_kd", "distill/loss_ce", "loss", *rcnn.LOSS_KEYS} <= set(metrics)


def test_bad_teacher_is_named(models):
    student, _ = models
    kd = distillers.get_distiller("kd", ce_weight=0.0)
    with pytest.raises(ValueError, match="none was given"):
        distill.make_train_step(student, None, kd, TX, steps_per_epoch=1)
    other = rcnn.get_detector("faster_rcnn_r18_fpn", **{**TINY, "num_classes": 5})
    with pytest.raises(ValueError, match="5 classes"):
        distill.make_train_step(student, other, kd, TX, steps_per_epoch=1)
    vanilla = distillers.get_distiller("vanilla")
    assert distill.make_train_step(student, None, vanilla, TX, steps_per_epoch=1) is not None


@pytest.fixture(scope="module")
def variables(models):
    student, teacher = models
    return rcnn.init_variables(student, 0), _without_rpn(rcnn.init_variables(teacher, 1))


@pytest.mark.slow  # compiles the detector's forward twice (minutes on 2 CPU cores)
@pytest.mark.parametrize("name", ["kd", "dkd", "luminet"])
def test_distill_loss_is_the_distiller_on_valid_rois_and_teacher_gets_no_gradient(
    models, variables, name
):
    _, teacher = models
    # 8 proposals per image for 16 RoI slots: with the ground truth appended, some are padding.
    student = rcnn.get_detector("faster_rcnn_r18_fpn", **{**TINY, "rpn_post_nms_topk_train": 8})
    s_vars, t_vars = variables
    distiller = distillers.get_distiller(name, ce_weight=0.0)
    batch = _batch(4, seed=1)
    _, aux = jax.jit(lambda v, b: rcnn.train_forward(student, v, b, jax.random.key(3)))(
        s_vars, batch
    )

    def loss(t_vars, s_logits):
        return distill.roi_distill_loss(
            teacher, distiller, {**aux, "class_logits": s_logits}, batch["image"], t_vars, epoch=5
        )[0]

    value, (t_grad, s_grad) = jax.jit(jax.value_and_grad(loss, (0, 1)))(t_vars, aux["class_logits"])
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(t_grad))  # constants
    valid = np.asarray(aux["roi_valid"])
    assert 0 < valid.sum() < valid.size  # some RoIs are padding
    assert not np.any(np.asarray(s_grad)[~valid]) and np.any(np.asarray(s_grad)[valid])
    t_logits = rcnn.roi_class_logits(teacher, t_vars, batch["image"], aux["rois"])
    want = distiller(
        aux["class_logits"][valid], t_logits[valid], aux["roi_classes"][valid], epoch=5
    ).total
    np.testing.assert_allclose(value, want, rtol=1e-4)  # float32 reordering: 1.1e-5 measured


@pytest.mark.slow  # two compilations of the distillation train step
def test_eight_devices_equal_one_luminet_step(models, variables):
    s_vars, t_vars = variables
    batch = _batch(8, seed=2)
    one, m1 = jax.jit(_step(models, "luminet"))(_state(s_vars), t_vars, batch)
    mesh = sharding.make_mesh()
    step8 = sharding.shard_train_step(_step(models, "luminet", axis_name="data"), mesh)
    eight, m8 = step8(_state(s_vars), jax.device_put(t_vars, sharding.replicated(mesh)), batch)
    for k in ("loss", "distill/loss_kd", *rcnn.LOSS_KEYS, "grad_norm"):
        np.testing.assert_allclose(m8[k], m1[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert float(m1["distill/loss_kd"]) > 0
    for a, b in zip(jax.tree.leaves(eight.params), jax.tree.leaves(one.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_pixel_converter_gives_the_teacher_its_own_normalization():
    """A torchvision-normalized RGB batch -> detectron2's MSRA input (BGR, std 1), as
    `detection.data.transform` would have made it from the same pixels; padding stays 0."""
    from luminet_jax.detection import data, sources

    rgb = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), False)
    msra = ((123.675, 116.28, 103.53), (1.0, 1.0, 1.0), True)
    assert distill.pixel_converter(rgb, rgb) is None
    rng = np.random.default_rng(0)
    record = sources.Record(
        image_id=1, file_name="x.jpg", height=20, width=28,
        boxes=np.zeros((0, 4), np.float32), classes=np.zeros((0,), np.int32),
    )  # fmt: skip
    pixels = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)
    kw = dict(short_side=20, max_size=28, flip=False, pad_size=(32, 32), max_gt=2)
    make = lambda norm: data.transform(record, pixels, **kw, mean=norm[0], std=norm[1], bgr=norm[2])
    student, teacher = make(rgb)[0], make(msra)[0]
    convert = distill.pixel_converter(rgb, msra)
    got = convert(jnp.asarray(student["image"][None]), jnp.asarray(student["image_size"][None]))
    np.testing.assert_allclose(np.asarray(got[0]), teacher["image"], rtol=0, atol=1e-3)
    assert np.all(np.asarray(got[0, 20:]) == 0) and np.all(np.asarray(got[0, :, 28:]) == 0)
    back = distill.pixel_converter(msra, rgb)(got, jnp.asarray(student["image_size"][None]))
    np.testing.assert_allclose(np.asarray(back[0]), student["image"], rtol=0, atol=1e-5)


@pytest.mark.integration  # heavy: the second tier
def test_step_feeds_the_teacher_the_converted_images(models):
    student, teacher = models
    seen = []

    def teacher_input(images, image_size):
        seen.append((images.shape, image_size.shape))
        return images * 0.5

    distiller = distillers.get_distiller("kd", ce_weight=0.0)
    step = distill.make_train_step(
        student, teacher, distiller, TX, steps_per_epoch=10, teacher_input=teacher_input
    )
    state = jax.eval_shape(_state, rcnn.abstract_variables(student))
    batch = _batch(2)
    jax.eval_shape(step, state, _without_rpn(rcnn.abstract_variables(teacher)), batch)
    assert seen == [(batch["image"].shape, batch["image_size"].shape)]
