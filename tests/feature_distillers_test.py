"""Feature-based distillers: extra parameters, totals, gradients, 8 devices, start-up errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from luminet_jax import distillers, models
from luminet_jax.distillers import feature_losses as fl

NUM_DEVICES = 8
DATA = P("data")
FEATURE_METHODS = ["fitnet", "at", "rkd", "pkt", "sp", "vid", "nst", "kdsvd", "ofd", "reviewkd"]
# Hand-built student and teacher maps: (H, C) of stem, stage1..3; teacher channels differ.
S_SPEC = [(8, 4), (8, 4), (4, 8), (2, 16)]
T_SPEC = [(8, 6), (8, 6), (4, 12), (2, 24)]
# ReviewKD's per-pair lists for these maps (as mdistiller's configs give them per pair).
REVIEWKD = dict(
    in_channels=(4, 8, 16, 16), out_channels=(6, 12, 24, 24), shapes=(1, 2, 4, 8),
    out_shapes=(1, 2, 4, 8), warmup_epochs=4,
)  # fmt: skip
HPARAMS = {"reviewkd": REVIEWKD, "fitnet": dict(hint_layer=2)}
EXTRA_COUNTS = {"fitnet": 16_768, "ofd": 86_912, "reviewkd": 1_808_774, "vid": 258_496}


def has_fl(*names):
    missing = [n for n in names if not hasattr(fl, n)]
    return pytest.mark.skipif(bool(missing), reason=f"feature_losses lacks {missing} (H3a)")


def needs_losses(name):
    needed = {
        "at": ["at_loss"], "rkd": ["rkd_loss"], "pkt": ["pkt_loss"], "sp": ["sp_loss"],
        "vid": ["vid_loss"], "nst": ["nst_loss"], "kdsvd": ["kdsvd_loss"],
        "ofd": ["ofd_margin", "ofd_loss"], "reviewkd": ["hcl_loss"], "fitnet": [],
    }[name]  # fmt: skip
    # ReviewKD's 8-device check compiles its ABF modules twice (~15 s): run with -m slow.
    slow = (pytest.mark.slow,) if name == "reviewkd" else ()
    return pytest.param(name, marks=(has_fl(*needed), *slow))


METHOD_PARAMS = [needs_losses(n) for n in FEATURE_METHODS]


def make_feats(spec, batch, seed, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    feats = {}
    for i, (h, c) in enumerate(spec):
        pre = rng.standard_normal((batch, h, h, c))
        key = "stem" if i == 0 else f"stage{i}"
        feats[key] = jnp.asarray(np.maximum(pre, 0.0), dtype)
        if i > 0:
            feats[f"{key}_preact"] = jnp.asarray(pre, dtype)
    feats["pooled"] = jnp.mean(feats[f"stage{len(spec) - 1}"], axis=(1, 2))
    return feats


class FakeTeacher:
    """Stands in for a teacher module: OFD reads only `bn_before_relu(variables)`."""

    def bn_before_relu(self, variables):
        return [variables[f"bn{i}"] for i in range(1, len(T_SPEC))]


def fake_teacher_variables(dtype=jnp.float32):
    rng = np.random.default_rng(7)
    out = {}
    for i, (_, c) in enumerate(T_SPEC[1:], start=1):
        out[f"bn{i}"] = {
            k: jnp.asarray(v, dtype)
            for k, v in dict(
                scale=rng.uniform(0.2, 2.0, c) * rng.choice([-1, 1], c),
                bias=rng.standard_normal(c), mean=np.zeros(c), var=np.ones(c),
            ).items()
        }  # fmt: skip
    return out


def inputs(batch=4, seed=0, dtype=jnp.float32, classes=10):
    rng = np.random.default_rng(seed + 100)
    s_logits = jnp.asarray(rng.standard_normal((batch, classes)), dtype)
    t_logits = jnp.asarray(rng.standard_normal((batch, classes)), dtype)
    labels = jnp.asarray(rng.integers(0, classes, batch), jnp.int32)
    s_feats = make_feats(S_SPEC, batch, seed, dtype)
    t_feats = make_feats(T_SPEC, batch, seed + 1, dtype)
    return s_logits, t_logits, labels, s_feats, t_feats


def build(name, s_feats, t_feats, dtype=jnp.float32, *, abstract=False, **overrides):
    """The distiller and its `init` result (jitted, as the trainer runs it; `abstract`: shapes).

    The key is an `unsafe_rbg` one: its parameter initializers compile in a fraction of the
    time of threefry's (ReviewKD's init: 7 s instead of 40 s on a loaded 2-core machine).
    """
    distiller = distillers.get_distiller(name, **{**HPARAMS.get(name, {}), **overrides})
    init = lambda s, t, tv: distiller.init(  # noqa: E731
        jax.random.key(3, impl="unsafe_rbg"), s, t, teacher_variables=tv,
        teacher=FakeTeacher(), num_train=100,
    )  # fmt: skip
    run = jax.eval_shape if abstract else lambda f, *a: jax.jit(f)(*a)
    return distiller, run(init, s_feats, t_feats, fake_teacher_variables(dtype))


def call(distiller, extra, s_logits, t_logits, labels, s_feats, t_feats, epoch=2, **kw):
    return distiller(
        s_logits, t_logits, labels, epoch=epoch, s_feats=s_feats, t_feats=t_feats,
        extra={"params": extra.get("params", {}), "state": extra.get("state", {})}, **kw,
    )  # fmt: skip


# --- Extra parameter counts (resnet32x4 -> resnet8x4, abstract shapes only). ---


@pytest.fixture(scope="module")
def res32x4_res8x4():
    student = models.get_model("resnet8x4", num_classes=100)
    teacher = models.get_model("resnet32x4", num_classes=100)
    x = jnp.zeros((2, 32, 32, 3))

    def feats():
        sv = student.init(jax.random.key(0), x, train=False)
        tv = teacher.init(jax.random.key(1), x, train=False)
        return tv, student.apply(sv, x, train=False)[1], teacher.apply(tv, x, train=False)[1]

    return teacher, jax.eval_shape(feats)


@pytest.mark.parametrize(
    "name", [needs_losses(n) if n == "ofd" else n for n in sorted(EXTRA_COUNTS)]
)
def test_extra_parameter_counts_equal_the_reference(name, res32x4_res8x4):
    teacher, (tv, s_feats, t_feats) = res32x4_res8x4
    distiller = distillers.get_distiller(name)
    out = jax.eval_shape(
        lambda tv, s, t: distiller.init(
            jax.random.key(0), s, t, teacher_variables=tv, teacher=teacher, num_train=50_000
        ),
        tv, s_feats, t_feats,
    )  # fmt: skip
    assert sum(a.size for a in jax.tree.leaves(out["params"])) == EXTRA_COUNTS[name]


@pytest.mark.parametrize("name", ["at", "rkd", "pkt", "sp", "nst", "kdsvd"])
def test_methods_without_modules_have_no_extra_parameters(name):
    _, _, _, s_feats, t_feats = inputs()
    distiller, extra = build(name, s_feats, t_feats)
    assert extra == {} and distiller.uses_feats and distiller.uses_teacher


# --- Totals: ce_weight * CE + weight * the pure loss, on hand-built features (float64). ---


def np_bn_train(y):
    """BatchNorm in train mode at its init (scale 1, bias 0): batch statistics, eps 1e-5."""
    mean = y.mean(axis=(0, 1, 2))
    var = y.var(axis=(0, 1, 2))
    return (y - mean) / np.sqrt(var + 1e-5)


def conv1x1(x, kernel):
    return np.einsum("bhwc,cd->bhwd", x, np.asarray(kernel)[0, 0])


def jitted(fn, **kw):
    return jax.jit(functools.partial(fn, **kw))


def expected_kd(name, distiller, extra, s_feats, t_feats, epoch):
    """The method's weighted term from the pure losses (and NumPy for the connectors)."""
    np_ = lambda x: np.asarray(x, np.float64)  # noqa: E731
    stages = lambda f: [f[f"stage{i}"] for i in (1, 2, 3)]  # noqa: E731
    preacts = lambda f: [f[f"stage{i}_preact"] for i in (1, 2, 3)]  # noqa: E731
    p = extra.get("params")
    if name == "fitnet":  # hint layer 2: (4, 4, 8) -> (4, 4, 12), a 1x1 "valid" ConvReg.
        y = conv1x1(np_(s_feats["stage2"]), p["conv"]["kernel"]) + np_(p["conv"]["bias"])
        reg = np.maximum(np_bn_train(y), 0.0)
        return 100.0 * np.mean((reg - np_(t_feats["stage2"])) ** 2)
    if name == "at":
        return 1000.0 * jitted(fl.at_loss, p=2.0)(stages(s_feats), stages(t_feats))
    if name == "nst":
        return 50.0 * jitted(fl.nst_loss)(stages(s_feats), stages(t_feats))
    if name == "kdsvd":
        return 1.0 * jitted(fl.kdsvd_loss, k=1)(stages(s_feats), stages(t_feats))
    if name == "rkd":
        return 1.0 * jitted(fl.rkd_loss)(s_feats["pooled"], t_feats["pooled"])
    if name == "pkt":
        return 30000.0 * jitted(fl.pkt_loss)(s_feats["pooled"], t_feats["pooled"])
    if name == "sp":
        return 3000.0 * jitted(fl.sp_loss)([s_feats["stage3"]], [t_feats["stage3"]])
    if name == "vid":  # Same heights here, so no pooling; three 1x1 convs without bias.
        total = 0.0
        for i, (f_s, f_t) in enumerate(zip(stages(s_feats), stages(t_feats))):
            h = np.maximum(conv1x1(np_(f_s), p[f"regressor{i}_conv0"]["kernel"]), 0)
            h = np.maximum(conv1x1(h, p[f"regressor{i}_conv1"]["kernel"]), 0)
            mean = conv1x1(h, p[f"regressor{i}_conv2"]["kernel"])
            total += jitted(fl.vid_loss, eps=1e-5)(jnp.asarray(mean), f_t, p[f"log_scale{i}"])
        return total
    if name == "ofd":
        bns = FakeTeacher().bn_before_relu(fake_teacher_variables(jnp.float64))
        total = 0.0
        for i, (f_s, f_t, bn) in enumerate(zip(preacts(s_feats), preacts(t_feats), bns)):
            s = np_bn_train(conv1x1(np_(f_s), p[f"connector{i}_conv"]["kernel"]))
            margin = jitted(fl.ofd_margin)(bn["scale"], bn["bias"])
            total += jitted(fl.ofd_loss)(jnp.asarray(s), f_t, margin) / 2 ** (2 - i)
        return 1e-3 * total
    if name == "reviewkd":  # The fused maps from the module itself; the loss from hcl_loss.
        from luminet_jax.distillers import reviewkd  # noqa: PLC0415

        module = distiller._module(param_dtype=jnp.float64)
        xs = [s_feats["pooled"][:, None, None], s_feats["stage3"], s_feats["stage2"]]
        xs.append(s_feats["stage1"])
        apply = functools.partial(module.apply, train=True, mutable=["batch_stats"])
        results, _ = jax.jit(apply)({"params": p, **extra["state"]}, xs)
        t_list = [*preacts(t_feats), t_feats["pooled"][:, None, None]]
        assert isinstance(distiller, reviewkd.ReviewKD)
        return min(epoch / 4, 1.0) * 1.0 * jitted(fl.hcl_loss)(results, t_list)
    raise AssertionError(name)


@pytest.mark.parametrize("name", METHOD_PARAMS)
@pytest.mark.integration  # heavy: the second tier
def test_total_is_ce_plus_weighted_pure_loss(name):
    with jax.enable_x64(True):
        s_logits, t_logits, labels, s_feats, t_feats = inputs(dtype=jnp.float64)
        distiller, extra = build(name, s_feats, t_feats, jnp.float64)
        run = jax.jit(
            lambda epoch: call(
                distiller, extra, s_logits, t_logits, labels, s_feats, t_feats, epoch
            )
        )
        for epoch in (1, 6):
            out = run(jnp.asarray(epoch))
            ce = distillers.softmax_xent(s_logits, labels)
            kd = expected_kd(name, distiller, extra, s_feats, t_feats, epoch)
            np.testing.assert_allclose(out.parts["loss_ce"], distiller.ce_weight * ce, rtol=1e-12)
            np.testing.assert_allclose(out.parts["loss_kd"], kd, rtol=1e-9)
            np.testing.assert_allclose(out.total, out.parts["loss_ce"] + kd, rtol=1e-9)
            assert out.total.dtype == jnp.float64


# --- Gradients reach the student and the extra params, never the teacher. ---


def loss_and_grads(distiller, extra, s_logits, labels, s_feats, t_feats, *, axis_name=None):
    """(total, d total / d (s_feats, t_feats, extra params), the new extra state)."""

    def loss(s_feats, t_feats, params):
        out = distiller(
            s_logits, None, labels, epoch=2, axis_name=axis_name, s_feats=s_feats,
            t_feats=t_feats, extra={"params": params, "state": extra.get("state", {})},
        )  # fmt: skip
        total = out.total if axis_name is None else jax.lax.pmean(out.total, axis_name)
        new_state = extra.get("state", {}) if out.state is None else out.state
        return total, new_state

    (total, new_state), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
        s_feats, t_feats, extra.get("params", {})
    )
    return total, grads, new_state


# --- 8 devices under shard_map equal one device. ---


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() >= NUM_DEVICES, "tests/conftest.py should force 8 CPU devices"
    return Mesh(np.array(jax.devices()[:NUM_DEVICES]), ("data",))


@pytest.mark.parametrize("name", METHOD_PARAMS)
@pytest.mark.integration  # heavy: the second tier
def test_eight_devices_equal_one_and_gradients(name, mesh):
    s_logits, _, labels, s_feats, t_feats = inputs(batch=16, seed=5)
    distiller, extra = build(name, s_feats, t_feats)
    fn = functools.partial(loss_and_grads, distiller, extra)
    want = jax.jit(fn)(s_logits, labels, s_feats, t_feats)
    feats_spec = lambda f: jax.tree.map(lambda _: DATA, f)  # noqa: E731
    sharded = jax.jit(
        jax.shard_map(
            functools.partial(fn, axis_name="data"),
            mesh=mesh,
            in_specs=(DATA, DATA, feats_spec(s_feats), feats_spec(t_feats)),
            out_specs=(P(), (feats_spec(s_feats), feats_spec(t_feats), P()), P()),
        )
    )
    got = sharded(s_logits, labels, s_feats, t_feats)
    chex.assert_trees_all_close(got, want, rtol=2e-4, atol=1e-5)

    # Gradients reach the student's features and every extra parameter, never the teacher.
    total, (g_s, g_t, g_extra), _ = want
    assert np.isfinite(total)
    for leaf in jax.tree.leaves(g_t):
        np.testing.assert_array_equal(leaf, 0.0)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(g_s))
    assert sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree.leaves(g_s)) > 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(g_extra):
        if name == "fitnet" and jax.tree_util.keystr(path) == "['conv']['bias']":
            continue  # A bias before a train-mode BatchNorm cancels: its gradient is 0 (noise).
        assert np.all(np.isfinite(leaf)) and np.any(leaf != 0.0), jax.tree_util.keystr(path)


# --- Start-up errors. ---


def test_missing_feature_key_names_it_and_lists_the_available_ones():
    _, _, _, s_feats, t_feats = inputs()
    no_preact = {k: v for k, v in t_feats.items() if not k.endswith("_preact")}
    with pytest.raises(KeyError, match=r"'stage1_preact'.*teacher.*\['pooled', 'stage1'"):
        build("ofd", s_feats, no_preact)
    with pytest.raises(KeyError, match=r"'pooled'.*student"):
        build("rkd", {k: v for k, v in s_feats.items() if k != "pooled"}, t_feats)
    with pytest.raises(KeyError, match=r"stage\{i\}.*student.*\['pooled'"):
        build("at", {"pooled": s_feats["pooled"]}, t_feats)


def test_hint_layer_out_of_range():
    _, _, _, s_feats, t_feats = inputs()
    with pytest.raises(ValueError, match=r"hint_layer=4 is out of range.*0\.\.3"):
        build("fitnet", s_feats, t_feats, hint_layer=4)


def test_conv_reg_cases_and_unmappable_sizes():
    _, _, _, s_feats, t_feats = inputs()
    for s_h, t_h, kind in [(8, 4, "stride2"), (4, 8, "deconv"), (8, 6, "valid"), (4, 4, "valid")]:
        s = {"stem": jnp.zeros((2, s_h, s_h, 3)), "stage1": jnp.zeros((2, s_h, s_h, 5))}
        t = {"stem": jnp.zeros((2, t_h, t_h, 3)), "stage1": jnp.zeros((2, t_h, t_h, 7))}
        distiller, extra = build("fitnet", s, t, abstract=True, hint_layer=1)
        assert distiller._conv_reg(s["stage1"].shape, t["stage1"].shape).kind == kind
        out = jax.eval_shape(
            lambda s, t, e, d=distiller: d(
                jnp.zeros((2, 3)), None, jnp.zeros(2, jnp.int32), epoch=1, s_feats=s,
                t_feats=t, extra=e,
            ),
            s, t, extra,
        )  # fmt: skip
        assert out.total.shape == () and out.state["batch_stats"]["bn"]["mean"].shape == (7,)
    s = {"stem": s_feats["stem"], "stage1": jnp.zeros((2, 2, 2, 5))}
    t = {"stem": t_feats["stem"], "stage1": jnp.zeros((2, 8, 8, 7))}
    with pytest.raises(ValueError, match="cannot map the student's 2x2 map to the teacher's 8x8"):
        build("fitnet", s, t, hint_layer=1)


def test_reviewkd_lists_must_match_the_features():
    _, _, _, s_feats, t_feats = inputs()
    with pytest.raises(ValueError, match="in_channels/shapes give"):
        build("reviewkd", s_feats, t_feats, in_channels=(4, 8, 32, 16))
    with pytest.raises(ValueError, match="fix out_channels/out_shapes"):
        build("reviewkd", s_feats, t_feats, out_channels=(6, 12, 20, 24))
    with pytest.raises(ValueError, match="the other lists must match"):
        distillers.get_distiller("reviewkd", shapes=(1, 8, 16))


def test_unknown_hyperparameter():
    with pytest.raises(TypeError, match=r"'fitnet' got unknown hyperparameter\(s\) \['hint'\]"):
        distillers.get_distiller("fitnet", hint=2)


def test_nearest_resize_is_torch_nearest():
    from luminet_jax.distillers import feature_base  # noqa: PLC0415

    x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
    up = feature_base.nearest_resize(x, 8)  # torch: src = floor(dst * in / out)
    np.testing.assert_array_equal(up[:, ::2, ::2], x)
    np.testing.assert_array_equal(up[:, 1::2, 1::2], x)
    down = feature_base.nearest_resize(x, 2)
    np.testing.assert_array_equal(down, x[:, ::2, ::2])
