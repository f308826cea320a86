"""fast_conv: same outputs and gradients as XLA's convolution, and a no-op on a train step."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from luminet_jax import fast_conv, models, optim, sharding, state, steps
from luminet_jax.distillers import get_distiller

# (name, in_features, nn.Conv keyword arguments)
CONFIGS = [
    ("3x3_s1_same", 3, dict(features=4, kernel_size=(3, 3), padding="SAME")),
    ("3x3_s2_same", 4, dict(features=6, kernel_size=(3, 3), strides=2, padding="SAME")),
    ("3x3_s2_explicit", 4, dict(features=5, kernel_size=(3, 3), strides=2, padding=1)),
    ("3x3_s1_valid_bias", 3, dict(features=4, kernel_size=(3, 3), padding="VALID")),
    ("3x3_asym_pad", 2, dict(features=3, kernel_size=(3, 3), padding=((0, 2), (1, 0)))),
    ("1x1_s1_nobias", 6, dict(features=8, kernel_size=(1, 1), use_bias=False)),
    ("1x1_s2", 4, dict(features=8, kernel_size=(1, 1), strides=2, padding=0)),
    ("grouped_3x3", 6, dict(features=9, kernel_size=(3, 3), feature_group_count=3)),
    ("grouped_1x1", 8, dict(features=4, kernel_size=(1, 1), feature_group_count=2)),
    (
        "depthwise_s2",
        5,
        dict(features=5, kernel_size=(3, 3), strides=2, padding=1, feature_group_count=5),
    ),
    ("depthwise_mult2", 3, dict(features=6, kernel_size=(3, 3), feature_group_count=3)),
    ("5x3_rect", 3, dict(features=2, kernel_size=(5, 3), strides=(2, 1), padding="SAME")),
]


def _setup(configs, dtype):
    """Modules, parameters (non-zero biases) and 8x8 inputs (batch 2..4) for each config.

    Drawn with numpy: compiling Flax's initializers costs far more than the checks.
    """
    rng = np.random.default_rng(0)
    convs, params, inputs = [], [], []
    for i, (_, cin, kwargs) in enumerate(configs):
        conv = nn.Conv(**kwargs, dtype=dtype, param_dtype=dtype)
        ks = kwargs["kernel_size"]
        shape = tuple(ks) + (cin // kwargs.get("feature_group_count", 1), kwargs["features"])
        p = {"kernel": jnp.asarray(rng.normal(size=shape) / np.sqrt(np.prod(shape[:3])), dtype)}
        if kwargs.get("use_bias", True):
            p["bias"] = jnp.linspace(-1, 1, kwargs["features"], dtype=dtype)
        convs.append(conv)
        params.append(p)
        inputs.append(jnp.asarray(rng.normal(size=(2 + i % 3, 8, 8, cin)), dtype))
    return convs, params, inputs


def _outputs_and_grads(convs, params, inputs, scope=None):
    """Every config's output and the gradients of a fixed projection w.r.t. input and params.

    All configs go through one jitted function, so each variant compiles once.
    """

    def f(params, inputs):
        ys = [c.apply({"params": p}, x) for c, p, x in zip(convs, params, inputs)]
        proj = sum(
            jnp.sum(y * jnp.cos(jnp.arange(y.size, dtype=y.dtype).reshape(y.shape))) for y in ys
        )
        return proj, ys

    grad_fn = jax.grad(f, argnums=(0, 1), has_aux=True)
    if scope is not None:
        grad_fn = fast_conv.wrap(grad_fn, scope=scope)
    (gp, gx), ys = jax.jit(grad_fn)(params, inputs)
    return ys, gp, gx


def _check_configs(configs, dtype, rtol):
    convs, params, inputs = _setup(configs, dtype)
    ys_ref, gp_ref, gx_ref = _outputs_and_grads(convs, params, inputs)
    ys, gp, gx = _outputs_and_grads(convs, params, inputs, scope="all")
    for i, (name, _, _) in enumerate(configs):
        # Forward: the very same XLA convolution.
        np.testing.assert_array_equal(ys[i], ys_ref[i], err_msg=name)
        chex.assert_trees_all_equal_shapes_and_dtypes(gp[i], gp_ref[i])
        for got, ref in ((gx[i], gx_ref[i]), (gp[i]["kernel"], gp_ref[i]["kernel"])):
            scale = np.max(np.abs(ref))
            np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale, err_msg=name)


@pytest.mark.integration  # heavy: the second tier
def test_matches_xla_float32():
    _check_configs(CONFIGS, jnp.float32, rtol=1e-5)


@pytest.mark.integration  # heavy: the second tier
def test_matches_xla_float64():
    with jax.enable_x64(True):
        _check_configs([CONFIGS[i] for i in (2, 5, 7, 9)], jnp.float64, rtol=1e-10)


@pytest.mark.slow  # ~8 s; test_matches_xla_* compare the same gradients through models
def test_conv2d_custom_vjp_directly():
    """`conv2d` itself equals lax.conv_general_dilated in value and both gradients."""
    x = jax.random.normal(jax.random.key(2), (3, 8, 8, 4))
    w = jax.random.normal(jax.random.key(3), (3, 3, 2, 6))
    args = ((2, 2), ((1, 1), (1, 1)), 2)

    def ref(x, w):
        return lax.conv_general_dilated(
            x, w, (2, 2), ((1, 1), (1, 1)), None, None, ("NHWC", "HWIO", "NHWC"), 2
        )

    fast = lambda x, w: fast_conv.conv2d(x, w, *args)
    g = jax.random.normal(jax.random.key(4), (3, 4, 4, 6))
    y_ref, (dx_ref, dw_ref) = jax.jit(lambda x, w: (ref(x, w), jax.vjp(ref, x, w)[1](g)))(x, w)
    y, (dx, dw) = jax.jit(lambda x, w: (fast(x, w), jax.vjp(fast, x, w)[1](g)))(x, w)
    np.testing.assert_array_equal(y, y_ref)
    chex.assert_trees_all_close((dx, dw), (dx_ref, dw_ref), atol=1e-5, rtol=1e-5)


def _count_matmul_convs(fn, *args):
    """Number of weight-gradient matmuls (dot_general) in the jaxpr of `fn`."""
    return str(jax.make_jaxpr(fn)(*args)).count("dot_general")


@pytest.mark.integration  # heavy: the second tier
def test_scope_pointwise_routes_only_1x1():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(4, (3, 3), name="c3")(x)
            return nn.Conv(4, (1, 1), name="c1")(x)

    net = Net()
    x = jnp.ones((2, 8, 8, 3))
    params = net.init(jax.random.key(0), x)["params"]
    grad = jax.grad(lambda p: jnp.sum(net.apply({"params": p}, x)))
    assert _count_matmul_convs(grad, params) == 0
    assert _count_matmul_convs(fast_conv.wrap(grad), params) == 1  # only the 1x1 conv
    assert _count_matmul_convs(fast_conv.wrap(grad, scope="all"), params) == 1 + 9
    assert fast_conv.wrap(grad, enabled=False) is grad
    with pytest.raises(ValueError, match="scope"):
        fast_conv.wrap(grad, scope="everything")


def test_init_inside_context_gives_the_same_variables():
    model = nn.Conv(4, (3, 3), strides=2, feature_group_count=1, use_bias=True)
    x = jnp.ones((2, 8, 8, 3))
    ref = model.init(jax.random.key(0), x)
    with fast_conv.matmul_weight_grad("all"):
        got = model.init(jax.random.key(0), x)
    chex.assert_trees_all_equal(got, ref)


def _resnet8_or_none(**kw):
    try:
        return models.get_model("resnet8", num_classes=5, **kw)
    except Exception:  # noqa: BLE001 - the zoo may not be ready; the test then skips.
        return None


@pytest.mark.slow  # two sharded train-step compilations (~25 s); the op tests stay
def test_sharded_train_step_is_unchanged():
    """A sharded LumiNet step (resnet8, 16x16, 2 devices) is the same with and without wrap.

    scope="all" routes every conv (3x3, strided, 1x1 projections) through `conv2d`; under
    shard_map the replicated kernels' gradients must still be summed over the shards.
    """
    student = _resnet8_or_none(axis_name=sharding.DATA_AXIS)
    if student is None:
        pytest.skip("models.get_model('resnet8') is not available")
    mesh = sharding.make_mesh(jax.devices()[:2])
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    labels = jnp.arange(4) % 5
    init = jax.jit(lambda key: _resnet8_or_none().init(key, x, train=False))
    variables, teacher_vars = init(jax.random.key(1)), init(jax.random.key(2))
    tx = optim.make_optimizer(learning_rate=0.1, momentum=0.9, weight_decay=5e-4)
    distiller = get_distiller("luminet", ce_weight=2.0, alpha=3.0, temperature=4.0)
    step = steps.make_train_step(
        student, student, distiller, tx, steps_per_epoch=1, axis_name=sharding.DATA_AXIS
    )
    batch = jax.device_put({"image": x, "label": labels}, sharding.batch_sharding(mesh))
    teacher_vars = jax.device_put(teacher_vars, sharding.replicated(mesh))

    def run(fn):
        s = jax.jit(state.create_train_state, static_argnums=1)(variables, tx)
        s = jax.device_put(jax.tree.map(np.asarray, s), sharding.replicated(mesh))
        fn = sharding.shard_train_step(fn, mesh)
        for _ in range(2):
            s, metrics = fn(s, teacher_vars, batch)
        return s, metrics

    ref_state, ref_metrics = run(step)
    got_state, got_metrics = run(fast_conv.wrap(step, scope="all"))
    chex.assert_trees_all_close(got_metrics, ref_metrics, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(got_state.params, ref_state.params, rtol=1e-4, atol=1e-6)
