"""Model zoo: parameter counts, output shapes, feats, BatchNorm updates, dtypes, registry.

Shapes of every model come from `jax.eval_shape` (no compute); real forwards run only for a
few small CIFAR models, because compile time dominates on CPU.
"""

from __future__ import annotations

import functools
import os
import pathlib
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from luminet_jax import models
from luminet_jax.models import ensemble, torch_convert

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Parameter counts of the PyTorch references (100 classes for CIFAR and the compact ViT,
# 1000 for ImageNet models), from DESIGN.md section 2 and timm for DeiT.
EXPECTED_PARAMS = {
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg13": 9_462_180,
    "resnet50_cifar": 23_705_252,
    "mobilenet_v2": 812_836,
    "shufflenet_v1": 949_258,
    "shufflenet_v2": 1_355_528,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "mobilenet_v1": 4_231_976,
    "deit_tiny": 5_717_416,
    "deit_small": 22_050_664,
    "vit_compact": 2_407_140,  # our configuration (vit.py); the paper gives only "2.38M"
}


# Every other model is a CNN: feats["stage{i}_preact"] for every stage, and bn_before_relu.
VITS = {"deit_tiny", "deit_small", "vit_compact"}


def _num_classes(name: str) -> int:
    return 1000 if models.input_size(name) == 224 else 100


def _require(name: str) -> None:
    if models.MODELS[name] is None:
        pytest.skip("not yet implemented")


@functools.cache
def _abstract_apply(name: str, **kwargs):
    """(variables, (logits, feats)) as ShapeDtypeStructs for a batch of 2 at the model's size.

    Cached, because tracing a big model costs seconds on CPU; kwargs go to `get_model`.
    """
    model = models.get_model(name, num_classes=_num_classes(name), **kwargs)
    size = models.input_size(name)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)

    def run(x):
        variables = model.init(jax.random.key(0), x, train=False)
        return variables, model.apply(variables, x, train=False)

    return jax.eval_shape(run, x)


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _numpy_init(model, x, seed=0):
    """Variables for `model` without running its (slow-to-compile) random initializers.

    Kernels ~ N(0, 1/fan_in), biases 0, BatchNorm scale 1 / bias 0 / mean 0 / var 1.
    """
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    rng = np.random.default_rng(seed)

    def init(path, spec):
        leaf = str(path[-1].key)
        if leaf == "kernel":
            fan_in = int(np.prod(spec.shape[:-1]))
            return jnp.asarray(rng.normal(size=spec.shape) / np.sqrt(fan_in), spec.dtype)
        fill = 1.0 if leaf in ("scale", "var") else 0.0
        return jnp.full(spec.shape, fill, spec.dtype)

    return jax.tree_util.tree_map_with_path(init, abstract)


def test_expected_table_names_are_registered():
    assert set(EXPECTED_PARAMS) <= set(models.MODELS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
@pytest.mark.integration  # heavy: the second tier
def test_param_count_matches_reference(name):
    _require(name)
    abstract, _ = _abstract_apply(name)
    assert _count(abstract["params"]) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_output_shapes_and_feats(name):
    _require(name)
    variables, (logits, feats) = _abstract_apply(name)
    chex.assert_shape(logits, (2, _num_classes(name)))
    assert logits.dtype == jnp.float32
    assert {"stem", "stage1", "pooled"} <= set(feats)
    stages = sorted(k for k in feats if k.startswith("stage") and not k.endswith("_preact"))
    assert stages == [f"stage{i}" for i in range(1, len(stages) + 1)]
    preacts = {f"{k}_preact" for k in stages} if name not in VITS else set()
    assert set(feats) == {"stem", "pooled", *stages, *preacts}
    for key in preacts:  # values: tests/models_feats_test.py
        chex.assert_equal_shape([feats[key], feats[key[: -len("_preact")]]])
    assert feats["pooled"].ndim == 2 and feats["pooled"].shape[0] == 2
    assert set(variables) <= {"params", "batch_stats"}


@pytest.mark.parametrize("name", sorted(set(models.MODELS) - VITS))
def test_bn_before_relu_has_one_batch_norm_per_stage(name):
    _require(name)
    variables, (_, feats) = _abstract_apply(name)
    model = models.get_model(name, num_classes=_num_classes(name))
    bns = jax.eval_shape(lambda v: models.bn_before_relu(model, v), variables)
    stages = sorted(k for k in feats if k.startswith("stage") and not k.endswith("_preact"))
    assert len(bns) == len(stages)
    for stage, bn in zip(stages, bns):
        channels = feats[f"{stage}_preact"].shape[-1]
        assert {k: v.shape for k, v in bn.items()} == dict.fromkeys(
            ("scale", "bias", "mean", "var"), (channels,)
        )


@pytest.mark.parametrize("name", sorted(VITS))
def test_bn_before_relu_of_a_vit_raises(name):
    with pytest.raises(ValueError, match=name):
        models.bn_before_relu(models.get_model(name, num_classes=10), {})


@pytest.mark.parametrize("name", ["resnet8", "vgg8"])
def test_real_forward_matches_abstract_shapes(name):
    model = models.get_model(name, num_classes=100)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(_numpy_init(model, x), x)
    _, abstract_out = _abstract_apply(name)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, abstract_out)
    chex.assert_tree_all_finite(out)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1"])
@pytest.mark.integration  # heavy: the second tier
def test_train_mode_updates_batch_stats(name):
    model = models.get_model(name, num_classes=10)
    x = 1.0 + jax.random.normal(jax.random.key(1), (4, 32, 32, 3))

    @jax.jit
    def run(variables, x):
        train_out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return train_out[0], updates, model.apply(variables, x, train=False)[0]

    variables = _numpy_init(model, x)
    train_logits, updates, eval_logits = run(variables, x)
    old, new = variables["batch_stats"], updates["batch_stats"]
    assert jax.tree.structure(old) == jax.tree.structure(new)
    with pytest.raises(AssertionError):
        chex.assert_trees_all_close(old, new)
    assert not np.allclose(train_logits, eval_logits)
    if name == "resnet8":
        # The stem BN sees conv1(x); running stats move by 0.1 x the batch statistics
        # (PyTorch momentum 0.1) from (mean 0, var 1).
        pre = jax.lax.conv_general_dilated(
            x,
            variables["params"]["conv1"]["kernel"],
            (1, 1),
            ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        np.testing.assert_allclose(
            new["bn1"]["mean"], 0.1 * pre.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6
        )
        # Reference: PyTorch stores the unbiased (n / (n - 1)) batch variance in running_var,
        # Flax the biased one; with n = 4 * 32 * 32 the difference is 2e-5 relative.
        np.testing.assert_allclose(
            new["bn1"]["var"], 0.9 + 0.1 * pre.var(axis=(0, 1, 2)), rtol=1e-4
        )


def test_aliases_resolve():
    for alias, name in models.ALIASES.items():
        assert models.canonical_name(alias) == name
        assert name in models.MODELS
        assert models.input_size(alias) == models.input_size(name)
    assert models.canonical_name("vgg8_bn") == "vgg8"
    assert models.canonical_name("ResNet50") == "resnet50_cifar"
    if models.MODELS["vgg8"] is not None:
        assert models.get_model("vgg8_bn", num_classes=3) == models.get_model("vgg8", num_classes=3)


def test_unknown_name_raises_key_error_listing_names():
    with pytest.raises(KeyError, match="resnet32x4") as info:
        models.get_model("resnet9000", num_classes=10)
    assert "resnet9000" in str(info.value)
    with pytest.raises(KeyError):
        models.input_size("nope")


@pytest.mark.integration  # heavy: the second tier
def test_float64_forward_gives_float64_logits():
    with jax.enable_x64(True):
        model = models.get_model("resnet8", num_classes=10)
        x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3), dtype=jnp.float64)

        variables = _numpy_init(model, x)
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
        variables64 = jax.tree.map(lambda a: a.astype(jnp.float64), variables)
        logits, feats = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables64, x)
        assert logits.dtype == jnp.float64
        assert feats["pooled"].dtype == jnp.float64
        # float32 parameters with float64 inputs still compute in the inputs' dtype.
        _, (logits32p, _) = jax.eval_shape(
            lambda v, x: (None, model.apply(v, x, train=False)), variables, x
        )
        assert logits32p.dtype == jnp.float64


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_16_2", "vgg8", "resnet50_cifar", "resnet18"])
def test_compute_dtype_option(name):
    _, (logits, feats) = _abstract_apply(name, dtype=jnp.bfloat16)
    assert logits.dtype == jnp.bfloat16
    assert feats["stage1"].dtype == jnp.bfloat16
    variables, _ = _abstract_apply(name, dtype=jnp.bfloat16)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))


def test_sync_batch_norm_axis_name_is_threaded():
    model = models.get_model("resnet8", num_classes=10, axis_name="data")
    x = jnp.ones((2, 32, 32, 3))
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)

    def per_device(v, x):
        (logits, _), updates = model.apply(v, x, train=True, mutable=["batch_stats"])
        return logits, updates

    # The "data" axis must be bound for train mode: BatchNorm psums its statistics over it.
    with pytest.raises(NameError, match="data"):
        jax.eval_shape(per_device, variables, x)
    out = jax.eval_shape(
        jax.vmap(per_device, in_axes=(None, 0), axis_name="data"),
        variables,
        jnp.ones((2, 2, 32, 32, 3)),
    )
    chex.assert_shape(out[0], (2, 2, 10))


def test_ensemble_averages_its_teachers_logits():
    teachers = [models.get_model("resnet8", num_classes=10) for _ in range(2)]
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
    ens = models.make_ensemble(teachers)

    teacher_vars = [_numpy_init(m, x, seed=i) for i, m in enumerate(teachers)]
    ens_vars = ensemble.Ensemble.combine_variables(teacher_vars)

    @jax.jit
    def run(teacher_vars, ens_vars, x):
        outs = [m.apply(v, x, train=False) for m, v in zip(teachers, teacher_vars)]
        return outs, ens.apply(ens_vars, x, train=False)

    outs, (logits, feats) = run(teacher_vars, ens_vars, x)
    abstract = jax.eval_shape(lambda x: ens.init(jax.random.key(0), x, train=False), x)
    assert jax.tree.structure(abstract) == jax.tree.structure(ens_vars)
    np.testing.assert_allclose(logits, (outs[0][0] + outs[1][0]) / 2, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(feats, outs[0][1])
    assert not np.allclose(outs[0][0], outs[1][0])


def _to_torch_state_dict(variables) -> dict[str, np.ndarray]:
    """Inverse of the generic key rule (HWIO -> OIHW etc.), to check from_torch per family."""
    sd = {}
    for collection in ("params", "batch_stats"):
        for key_path, leaf in jax.tree_util.tree_flatten_with_path(variables.get(collection, {}))[
            0
        ]:
            path = tuple(str(k.key) for k in key_path)
            value = np.asarray(leaf)
            if collection == "params" and path[-1] == "kernel":
                value = (
                    value.T
                    if value.ndim == 2
                    else np.transpose(
                        value, (value.ndim - 1, value.ndim - 2, *range(value.ndim - 2))
                    )
                )
            sd[torch_convert.torch_key(collection, path)] = value
    return sd


@pytest.mark.parametrize("name", sorted(models.MODELS))
@pytest.mark.integration  # heavy: the second tier
def test_from_torch_inverts_the_generic_key_rule(name):
    _require(name)
    num_classes = _num_classes(name)
    abstract, _ = _abstract_apply(name)
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), abstract)
    sd = _to_torch_state_dict(variables)
    converted = models.from_torch(name, sd, num_classes=num_classes)
    chex.assert_trees_all_equal(converted["params"], variables["params"])
    chex.assert_trees_all_equal(converted["batch_stats"], variables.get("batch_stats", {}))


@pytest.mark.integration
def test_models_import_without_torch():
    code = "import sys, luminet_jax.models; assert 'torch' not in sys.modules, 'torch imported'"
    # PYTHONPATH, not only the cwd: with PYTHONSAFEPATH=1 the cwd is not on sys.path.
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
