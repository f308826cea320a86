"""Shapes, parameter counts, feats, BatchNorm updates and dtypes of the mobile models and ViTs.

Parameter counts and output shapes/dtypes come from `jax.eval_shape` (no compute); real
forward passes run only for the 32x32 models at batch 2.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from luminet_jax import models

# name -> (num_classes, parameter count of the PyTorch reference)
PARAM_COUNTS = {
    "mobilenet_v2": (100, 812_836),
    "shufflenet_v1": (100, 949_258),
    "shufflenet_v2": (100, 1_355_528),
    "mobilenet_v1": (1000, 4_231_976),
    "deit_tiny": (1000, 5_717_416),
    "deit_small": (1000, 22_050_664),
    "vit_compact": (100, 2_407_140),  # our choice for the paper's ~2.38M (see vit.py)
}

# name -> feats shapes at batch 2 and the model's input size.
FEAT_SHAPES = {
    "shufflenet_v1": {
        "stem": (2, 32, 32, 24),
        "stage1": (2, 16, 16, 240),
        "stage2": (2, 8, 8, 480),
        "stage3": (2, 4, 4, 960),
        "pooled": (2, 960),
    },
    "shufflenet_v2": {
        "stem": (2, 32, 32, 24),
        "stage1": (2, 16, 16, 116),
        "stage2": (2, 8, 8, 232),
        "stage3": (2, 4, 4, 464),
        "pooled": (2, 1024),
    },
    "mobilenet_v2": {
        "stem": (2, 16, 16, 16),
        "stage1": (2, 16, 16, 12),
        "stage2": (2, 8, 8, 16),
        "stage3": (2, 4, 4, 48),
        "stage4": (2, 2, 2, 160),
        "pooled": (2, 1280),
    },
    "vit_compact": {
        "stem": (2, 64, 128),
        **{f"stage{k}": (2, 65, 128) for k in range(1, 5)},
        "pooled": (2, 128),
    },
    "mobilenet_v1": {
        "stem": (2, 112, 112, 32),
        "stage1": (2, 56, 56, 128),
        "stage2": (2, 28, 28, 256),
        "stage3": (2, 14, 14, 512),
        "stage4": (2, 7, 7, 1024),
        "pooled": (2, 1024),
    },
    "deit_tiny": {
        "stem": (2, 196, 192),
        **{f"stage{k}": (2, 197, 192) for k in range(1, 5)},
        "pooled": (2, 192),
    },
    "deit_small": {
        "stem": (2, 196, 384),
        **{f"stage{k}": (2, 197, 384) for k in range(1, 5)},
        "pooled": (2, 384),
    },
}
CIFAR_CNNS = ("shufflenet_v1", "shufflenet_v2", "mobilenet_v2")
# The CNNs' stage{i}_preact have their stage{i}'s shape.
for _name in (*CIFAR_CNNS, "mobilenet_v1"):
    _shapes = FEAT_SHAPES[_name]
    _shapes.update({f"{k}_preact": v for k, v in list(_shapes.items()) if k.startswith("stage")})


# Families whose compute dtype is checked (deit_* share vit_compact's code).
DTYPE_MODELS = ("shufflenet_v1", "shufflenet_v2", "mobilenet_v2", "mobilenet_v1", "vit_compact")


def _images(name, dtype=jnp.float32, batch=2):
    size = models.input_size(name)
    return jax.random.normal(jax.random.key(0), (batch, size, size, 3), dtype)


def _abstract(name, dtype=None):
    """(model, abstract variables, abstract batch-2 input) without any compute."""
    num_classes = PARAM_COUNTS[name][0]
    model = models.get_model(name, num_classes=num_classes, dtype=dtype)
    size = models.input_size(name)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    return model, variables, x


def _random_variables(abstract, seed=0):
    """Concrete variables for `abstract` without running `init`.

    (Jitting `init` spends ~10-20 s of CPU compiling the per-parameter RNG; the forward
    tests only need plausible values: unit BatchNorm/LayerNorm, fan-in scaled weights.)
    """
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        if name in ("bias", "mean"):
            return jnp.zeros(leaf.shape, leaf.dtype)
        fan_in = max(int(np.prod(leaf.shape[:-1])), 1)
        return jnp.asarray(rng.normal(0.0, fan_in**-0.5, leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def _abstract_apply(model, variables, x):
    return jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
@pytest.mark.integration  # heavy: the second tier
def test_parameter_count_and_output_shapes(name):
    num_classes, expected = PARAM_COUNTS[name]
    model, variables, x = _abstract(name)
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"]))
    assert count == expected
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    logits, feats = _abstract_apply(model, variables, x)
    assert logits.shape == (2, num_classes) and logits.dtype == jnp.float32
    assert {k: v.shape for k, v in feats.items()} == FEAT_SHAPES[name]


@pytest.mark.parametrize("name", DTYPE_MODELS)
@pytest.mark.integration  # heavy: the second tier
def test_compute_dtype_follows_option_and_inputs(name):
    # bf16 compute with float32 parameters (the accelerator setting).
    model, variables, x = _abstract(name, dtype=jnp.bfloat16)
    logits, feats = _abstract_apply(model, variables, x)
    assert logits.dtype == jnp.bfloat16
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    # dtype=None follows the inputs: float64 variables and images give float64 everywhere.
    model, variables, x = _abstract(name)
    with jax.enable_x64(True):
        as64 = lambda s: jax.ShapeDtypeStruct(s.shape, jnp.float64)
        logits, feats = _abstract_apply(model, jax.tree.map(as64, variables), as64(x))
    assert logits.dtype == jnp.float64
    assert all(f.dtype == jnp.float64 for f in feats.values())


# With -m slow (~7-10 s each; their eval forwards are also checked against PyTorch in
# torch_parity_mobile_test, and train-mode batch statistics in models_test for the ResNets).
@pytest.mark.slow
@pytest.mark.parametrize("name", CIFAR_CNNS)
def test_cifar_forward_and_batch_stats_update(name):
    model, abstract, _ = _abstract(name)
    variables = _random_variables(abstract)

    @jax.jit
    def run(variables, x):  # one compilation for eval and train
        eval_out = model.apply(variables, x, train=False)
        train_out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return eval_out, train_out, updates

    (logits, feats), (train_logits, _), updates = run(variables, _images(name))
    assert set(variables) == {"params", "batch_stats"}
    chex.assert_shape(logits, (2, 100))
    chex.assert_tree_all_finite((logits, feats, train_logits, updates))
    assert {k: v.shape for k, v in feats.items()} == FEAT_SHAPES[name]
    chex.assert_trees_all_equal_structs(updates["batch_stats"], variables["batch_stats"])
    # Every running mean/var moves towards the batch statistics (momentum 0.9).
    moved = jax.tree.map(
        lambda new, old: bool(jnp.any(new != old)),
        updates["batch_stats"],
        variables["batch_stats"],
    )
    assert all(jax.tree.leaves(moved))
    # Training mode normalizes with batch statistics, so its logits differ from eval mode.
    assert not np.allclose(train_logits, logits)


@pytest.mark.integration  # heavy: the second tier
def test_vit_compact_forward_has_no_batch_stats():
    model, abstract, _ = _abstract("vit_compact")
    assert set(abstract) == {"params"}
    variables = _random_variables(abstract)
    x = _images("vit_compact")
    logits, feats = jax.jit(lambda v, x: model.apply(v, x, train=True))(variables, x)
    chex.assert_shape(logits, (2, 100))
    chex.assert_tree_all_finite((logits, feats))
    assert {k: v.shape for k, v in feats.items()} == FEAT_SHAPES["vit_compact"]
    # "pooled" is the final-normed class token: at init (scale 1, bias 0) each row has zero
    # mean and unit variance over channels.
    np.testing.assert_allclose(jnp.mean(feats["pooled"], axis=-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.var(feats["pooled"], axis=-1), 1.0, rtol=1e-3)


@pytest.mark.integration  # heavy: the second tier
def test_vit_drop_path_needs_rng_and_is_off_by_default():
    model = models.get_model("vit_compact", num_classes=10, depth=2, drop_path_rate=0.5)
    default = models.get_model("vit_compact", num_classes=10, depth=2)
    x = _images("vit_compact")
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    variables = _random_variables(abstract)

    @jax.jit
    def run(variables, x):
        eval_logits, _ = model.apply(variables, x, train=False)
        a, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
        b, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})
        c, _ = default.apply(variables, x, train=True)  # no rng needed at the default rate 0
        return eval_logits, a, b, c

    eval_logits, a, b, c = run(variables, x)
    assert not np.allclose(a, b)  # stochastic depth is active in training
    np.testing.assert_allclose(c, eval_logits, atol=1e-6)
