"""stage{i}_preact and bn_before_relu of the CNN zoo against the PyTorch references.

The references are the parity tests' own modules (torch_refs_cifar.py,
torch_refs_mobile.py) with random weights, BatchNorm affines and running statistics;
their `features(x)` follows mdistiller's forward (`feats`, `preact_feats`, `pooled_feat`),
their `get_bn_before_relu()` mdistiller's method. Weights go through `models.from_torch`.
Inputs are 16x16, batch 2. The ResNets, WRN and VGG run in float64 (jax x64, torch double)
and agree to rounding; the depthwise/grouped models run in float32 (PyTorch's float64
grouped convs take seconds on CPU) and agree to 1e-4 relative. Either way a misplaced ReLU,
BatchNorm or shuffle shows (test_preact_differs_from_stage_where_a_relu_follows).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from luminet_jax import models
from luminet_jax.models import layers

torch = pytest.importorskip("torch")

import torch_parity_mobile_test as mobile_refs  # noqa: E402
import torch_refs_cifar as conv_refs  # noqa: E402

SIZE, BATCH = 16, 2
FLOAT32 = {"shufflenet_v1", "shufflenet_v2", "mobilenet_v2", "mobilenet_v1"}
# Largest |ours - reference| / max |reference| (measured: float64 ~1e-15, float32 ~1e-6).
REL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
# XLA:CPU's backend optimizations double the compile time and do not matter at this size.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# name -> whether mdistiller's preact_feats starts with the stem (CIFAR) or not (MobileNetV1).
NAMES = {
    "resnet8x4": True,
    "resnet20": True,
    "wrn_16_2": True,
    "vgg8": True,
    "shufflenet_v1": True,
    "shufflenet_v2": True,
    "mobilenet_v2": True,
    "resnet50_cifar": True,
    "resnet18": True,  # ours and the reference skip the ImageNet stem entry (models/resnet.py)
    "mobilenet_v1": False,
}
SLOW = {"resnet50_cifar", "mobilenet_v1"}  # float64 torch convs of 2-4M parameters
# The reference modules with a get_bn_before_relu (ShuffleV2's is checked from the Flax side).
TORCH_BNS = sorted(set(NAMES) - {"shufflenet_v2"})


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


def _reference(name):
    if name in mobile_refs.REFERENCES:
        return mobile_refs._randomized(name)
    return conv_refs._reference(name, num_classes=10)[0], 10


@functools.cache
def _run(name):
    """(torch net, its features, our feats, our intermediates, our bn_before_relu), numpy."""
    net, num_classes = _reference(name)
    dtype = np.float32 if name in FLOAT32 else np.float64
    net = net.to(torch.float32 if dtype == np.float32 else torch.float64)
    images = np.random.default_rng(1).normal(size=(BATCH, 3, SIZE, SIZE)).astype(dtype)
    with torch.no_grad():
        _, ref = net.features(torch.from_numpy(images))
    ref = {k: [t.numpy().transpose(0, 2, 3, 1) for t in ref[k]] for k in ("feats", "preact_feats")}
    with jax.enable_x64(dtype == np.float64):
        variables = models.from_torch(name, net.state_dict(), num_classes=num_classes)
        model = models.get_model(name, num_classes=num_classes)
        x = jnp.asarray(images.transpose(0, 2, 3, 1))
        apply = jax.jit(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True))
        (_, feats), state = apply.lower(variables, x).compile(FAST_COMPILE)(variables, x)
        feats, inter = jax.tree.map(np.asarray, (feats, state["intermediates"]))
        bns = jax.tree.map(np.asarray, models.bn_before_relu(model, variables))
    assert feats["stage1_preact"].dtype == dtype
    return net, ref, feats, inter, bns


def _assert_rel(actual, expected):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    scale = np.abs(expected).max()
    assert scale > 1e-3  # not a comparison of (near) zeros
    err = np.abs(actual - expected).max() / scale
    assert err <= REL[expected.dtype], f"relative error {err:.3g}"


def _stages(feats):
    return sorted(k for k in feats if k.startswith("stage") and not k.endswith("_preact"))


def _bn(entry, x):
    """The eval-mode BatchNorm `entry` applied to x."""
    inv = entry["scale"] / np.sqrt(entry["var"] + layers.BN_EPSILON)
    return (x - entry["mean"]) * inv + entry["bias"]


def _out(inter, *path):
    """The captured output of the submodule at `path`."""
    for p in path:
        inter = inter[p]
    return inter["__call__"][0]


@pytest.mark.parametrize("name", _params(NAMES))
@pytest.mark.integration  # heavy: the second tier
def test_stage_preact_matches_mdistiller_preact_feats(name):
    _, ref, feats, _, _ = _run(name)
    stages = _stages(feats)
    offset = 1 if NAMES[name] else 0
    assert len(ref["preact_feats"]) == len(stages) + offset
    for i, stage in enumerate(stages, start=1):
        _assert_rel(feats[f"{stage}_preact"], ref["preact_feats"][i - 1 + offset])
        _assert_rel(feats[stage], ref["feats"][i - 1 + offset])
    if NAMES[name] and name != "resnet18":
        # mdistiller's preact_feats[0] is its stem feature itself: our feats["stem"].
        np.testing.assert_array_equal(ref["preact_feats"][0], ref["feats"][0])
        _assert_rel(feats["stem"], ref["preact_feats"][0])


@pytest.mark.integration  # heavy: the second tier
def test_preact_differs_from_stage_where_a_relu_follows():
    # The comparisons above can fail: pre-activations have negative entries that the ReLU
    # removes (WRN's stages have no ReLU; their preact is the next BatchNorm's output).
    for name in ("resnet20", "vgg8", "wrn_16_2", "shufflenet_v1", "shufflenet_v2"):
        _, _, feats, _, _ = _run(name)
        for stage in _stages(feats):
            preact, out = feats[f"{stage}_preact"], feats[stage]
            assert not np.allclose(preact, out)
            if name != "wrn_16_2":
                assert preact.min() < 0 <= out.min()


@pytest.mark.parametrize("name", _params(TORCH_BNS))
def test_bn_before_relu_is_the_reference_batch_norm(name):
    net, _, feats, _, bns = _run(name)
    torch_bns = net.get_bn_before_relu()
    assert len(bns) == len(torch_bns) == len(_stages(feats))
    for stage, entry, bn in zip(_stages(feats), bns, torch_bns):
        assert set(entry) == {"scale", "bias", "mean", "var"}
        for key, value in zip(
            ("scale", "bias", "mean", "var"),
            (bn.weight, bn.bias, bn.running_mean, bn.running_var),
        ):
            np.testing.assert_array_equal(entry[key], value.detach().numpy())
        assert entry["scale"].shape == feats[f"{stage}_preact"].shape[-1:]


@pytest.mark.parametrize("name", ["resnet8x4", "resnet20"])
def test_resnet_bn_before_relu_plus_shortcut_gives_the_stage(name):
    # resnet8x4's single blocks have projection shortcuts, resnet20's last blocks identities.
    _, _, feats, inter, bns = _run(name)
    n = 1 if name == "resnet8x4" else 3
    for s, entry in enumerate(bns, start=1):
        last = inter[f"layer{s}_{n - 1}"]
        if "downsample_1" in last:
            shortcut = _out(last, "downsample_1")
        else:
            shortcut = _out(inter, f"layer{s}_{n - 2}")[0]
        preact = _bn(entry, _out(last, "conv2")) + shortcut
        _assert_rel(preact, feats[f"stage{s}_preact"])
        _assert_rel(np.maximum(preact, 0), feats[f"stage{s}"])


def test_wrn_bn_before_relu_applied_to_the_stage_gives_its_preact():
    _, _, feats, _, bns = _run("wrn_16_2")
    for s, entry in enumerate(bns, start=1):
        _assert_rel(_bn(entry, feats[f"stage{s}"]), feats[f"stage{s}_preact"])


def test_mobilenet_v2_bn_before_relu_is_the_last_projection():
    _, _, feats, inter, bns = _run("mobilenet_v2")
    for s, (group, entry) in enumerate(zip((1, 2, 4, 6), bns), start=1):
        blocks = sorted(k for k in inter if k.startswith(f"blocks_{group}_"))
        out = _bn(entry, _out(inter[blocks[-1]], "conv_6"))
        if len(blocks) > 1:  # later blocks of a group keep an identity shortcut
            out = out + _out(inter, blocks[-2])
        _assert_rel(out, feats[f"stage{s}"])
        np.testing.assert_array_equal(feats[f"stage{s}_preact"], feats[f"stage{s}"])


def test_shufflenet_v2_bn_before_relu_traces_each_channel_to_its_batch_norm():
    # Every channel of stage{i}_preact is either the last unit's bn3 output or, in the
    # passed-through half, the ReLU of an earlier BatchNorm channel of the stage; find that
    # channel by search over all the stage's BatchNorm outputs and compare its statistics
    # (the reference module's) with the returned entry.
    net, _, feats, inter, bns = _run("shufflenet_v2")
    for s, entry in enumerate(bns, start=1):
        preact = feats[f"stage{s}_preact"]
        half = preact.shape[-1] // 2
        returned = np.stack([entry[k] for k in ("scale", "bias", "mean", "var")], axis=-1)
        units = sorted((k for k in inter if k.startswith(f"layer{s}_")), key=_unit_index)
        by_output = {}  # ReLU'd output channel (bytes) -> [reference stats of its BatchNorm]
        for unit in units:
            for bn_name, value in inter[unit].items():
                out = value["__call__"][0] if bn_name.startswith("bn") else None
                if out is None or out.shape[:3] != preact.shape[:3]:
                    continue
                relu = np.maximum(out, 0) + 0.0  # + 0.0: no negative zeros
                stats = _reference_stats(net, s, unit, bn_name)
                for c in range(out.shape[-1]):
                    by_output.setdefault(relu[..., c].tobytes(), []).append(stats[c])
        last_bn3 = _reference_stats(net, s, units[-1], "bn3")
        np.testing.assert_array_equal(returned[half:], last_bn3)
        np.testing.assert_array_equal(_out(inter[units[-1]], "bn3"), preact[..., half:])
        identified = 0
        for j in range(half):
            found = by_output[(preact[..., j] + 0.0).tobytes()]
            if preact[..., j].any():
                assert len(found) == 1, (s, j, len(found))
                identified += 1
            # A channel the ReLU zeroed everywhere matches every dead channel: one of them.
            assert any(np.array_equal(returned[j], f) for f in found), (s, j)
        # With random weights about half the channels are dead (the BatchNorms' random
        # offsets decide their sign); the live ones are identified uniquely.
        assert identified >= half // 3


def _reference_stats(net, stage, unit, bn_name):
    """(C, 4) weight, bias, running_mean, running_var of a reference BatchNorm."""
    bn = getattr(getattr(net, f"layer{stage}")[_unit_index(unit)], bn_name)
    tensors = (bn.weight, bn.bias, bn.running_mean, bn.running_var)
    return np.stack([t.detach().numpy() for t in tensors], axis=-1)


def _unit_index(unit):
    return int(unit.rsplit("_", 1)[1])


def test_bn_before_relu_of_a_vit_names_the_model():
    model = models.get_model("vit_compact", num_classes=10)
    with pytest.raises(ValueError, match=r"ViT.*vit_compact"):
        models.bn_before_relu(model, {})
    ensemble = models.make_ensemble([models.get_model("resnet8", num_classes=10)])
    with pytest.raises(ValueError, match="Ensemble"):
        models.bn_before_relu(ensemble, {})


def test_bn_before_relu_names_a_missing_batch_norm():
    model = models.get_model("resnet20", num_classes=10)
    with pytest.raises(KeyError, match=r"layer1_2/bn2"):
        models.bn_before_relu(model, {"params": {}, "batch_stats": {}})
