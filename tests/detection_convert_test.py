"""detectron2 checkpoint import: the real R-18/R-50-FPN key names and shapes load with no
missing or extra key, errors name keys, layouts transpose as PyTorch computes, and ImageNet
backbones (torchvision / C2 / detectron2 names) load into the ResNet.

The expected names are written here from detectron2's modules (resnet.py: `stem.conv1`,
`res{2..5}.{i}.conv{1,2,3}` with `.norm`, `shortcut` iff the width changes; fpn.py:
`fpn_lateral{2..5}`, `fpn_output{2..5}`; rpn.py: `rpn_head.conv/objectness_logits/
anchor_deltas`; box_head.py `fc1`, `fc2`; fast_rcnn.py `cls_score`, `bbox_pred`), independently
of the model code.
"""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from luminet_jax.detection import backbone, convert, rcnn, roi_heads

BLOCKS = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}


def _norm(prefix, c):
    return {
        f"{prefix}.norm.weight": (c,),
        f"{prefix}.norm.bias": (c,),
        f"{prefix}.norm.running_mean": (c,),
        f"{prefix}.norm.running_var": (c,),
    }


def resnet_keys(depth, width=64):
    """detectron2 ResNet names -> shapes (PyTorch layout), without a prefix."""
    keys = {"stem.conv1.weight": (width, 3, 7, 7), **_norm("stem.conv1", width)}
    bottleneck = depth >= 50
    in_c, out_c, mid = width, width * (4 if bottleneck else 1), width
    for s, n in enumerate(BLOCKS[depth]):
        for i in range(n):
            p = f"res{s + 2}.{i}"
            c = in_c if i == 0 else out_c
            if c != out_c:
                keys[f"{p}.shortcut.weight"] = (out_c, c, 1, 1)
                keys.update(_norm(f"{p}.shortcut", out_c))
            if bottleneck:
                convs = [(mid, c, 1), (mid, mid, 3), (out_c, mid, 1)]
            else:
                convs = [(out_c, c, 3), (out_c, out_c, 3)]
            for j, (o, ci, k) in enumerate(convs):
                keys[f"{p}.conv{j + 1}.weight"] = (o, ci, k, k)
                keys.update(_norm(f"{p}.conv{j + 1}", o))
        in_c, out_c, mid = out_c, out_c * 2, mid * 2
    return keys


def detector_keys(depth, num_classes, width=64, fpn=256, fc=1024):
    keys = {f"backbone.bottom_up.{k}": v for k, v in resnet_keys(depth, width).items()}
    res2 = width * (4 if depth >= 50 else 1)
    for level in range(2, 6):
        c = res2 * 2 ** (level - 2)
        keys[f"backbone.fpn_lateral{level}.weight"] = (fpn, c, 1, 1)
        keys[f"backbone.fpn_lateral{level}.bias"] = (fpn,)
        keys[f"backbone.fpn_output{level}.weight"] = (fpn, fpn, 3, 3)
        keys[f"backbone.fpn_output{level}.bias"] = (fpn,)
    h = "proposal_generator.rpn_head"
    keys.update({f"{h}.conv.weight": (fpn, fpn, 3, 3), f"{h}.conv.bias": (fpn,)})
    keys.update(
        {f"{h}.objectness_logits.weight": (3, fpn, 1, 1), f"{h}.objectness_logits.bias": (3,)}
    )
    keys.update({f"{h}.anchor_deltas.weight": (12, fpn, 1, 1), f"{h}.anchor_deltas.bias": (12,)})
    keys["roi_heads.box_head.fc1.weight"] = (fc, fpn * 49)
    keys["roi_heads.box_head.fc1.bias"] = (fc,)
    keys["roi_heads.box_head.fc2.weight"] = (fc, fc)
    keys["roi_heads.box_head.fc2.bias"] = (fc,)
    p = "roi_heads.box_predictor"
    keys.update(
        {f"{p}.cls_score.weight": (num_classes + 1, fc), f"{p}.cls_score.bias": (num_classes + 1,)}
    )
    keys.update(
        {f"{p}.bbox_pred.weight": (4 * num_classes, fc), f"{p}.bbox_pred.bias": (4 * num_classes,)}
    )
    return keys


def _random(keys, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s, dtype=np.float32) for k, s in keys.items()}


def _abstract_keys(model):
    leaves = convert._flat_leaves(rcnn.abstract_variables(model))
    return {convert.detectron2_key(path) for _, path, _ in leaves}


@pytest.mark.parametrize("depth,name", [(18, "faster_rcnn_r18_fpn"), (50, "faster_rcnn_r50_fpn")])
def test_real_detector_names_match_one_to_one(depth, name):
    model = rcnn.get_detector(name, num_classes=80)
    assert _abstract_keys(model) == set(detector_keys(depth, 80))


def test_r101_has_23_res4_blocks():
    keys = _abstract_keys(rcnn.get_detector("faster_rcnn_r101_fpn", num_classes=80))
    assert "backbone.bottom_up.res4.22.conv3.weight" in keys
    assert "backbone.bottom_up.res4.23.conv3.weight" not in keys


def test_r18_fpn_model_zoo_pickle_imports(tmp_path):
    keys = detector_keys(18, 80)
    sd = _random(keys)
    # Buffers a model zoo file may carry besides the weights: ignored.
    extra = {
        "pixel_mean": np.zeros((3, 1, 1), np.float32),
        "pixel_std": np.ones((3, 1, 1), np.float32),
        "proposal_generator.anchor_generator.cell_anchors.0": np.zeros((3, 4), np.float32),
    }
    path = tmp_path / "model_final_test.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {**sd, **extra}, "__author__": "Detectron2 Model Zoo"}, f)
    model = rcnn.get_detector("faster_rcnn_r18_fpn", num_classes=80)
    v = convert.from_detectron2(model, convert.load_state_dict(str(path)))
    p, fr = v["params"], v["frozen"]
    np.testing.assert_array_equal(
        p["backbone"]["fpn_output3"]["kernel"],
        sd["backbone.fpn_output3.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        fr["backbone"]["bottom_up"]["stem"]["conv1"]["kernel"],
        sd["backbone.bottom_up.stem.conv1.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        fr["backbone"]["bottom_up"]["res3_0"]["shortcut"]["norm"]["running_var"],
        sd["backbone.bottom_up.res3.0.shortcut.norm.running_var"],
    )
    np.testing.assert_array_equal(
        p["roi_heads"]["box_predictor"]["bbox_pred"]["kernel"],
        sd["roi_heads.box_predictor.bbox_pred.weight"].T,
    )
    abstract = rcnn.abstract_variables(model)
    assert jax.tree.structure(abstract) == jax.tree.structure(v)


@pytest.mark.integration  # heavy: the second tier
def test_r50_fpn_state_dict_imports_and_errors_name_keys():
    model = rcnn.get_detector("faster_rcnn_r50_fpn", num_classes=80)
    keys = detector_keys(50, 80)
    sd = {k: np.zeros(s, np.float32) for k, s in keys.items()}
    v = convert.from_detectron2(model, sd)
    assert v["params"]["backbone"]["bottom_up"]["res5_2"]["conv3"]["kernel"].shape == (
        1,
        1,
        512,
        2048,
    )

    bad = dict(sd)
    bad["roi_heads.box_predictor.cls_score.weight"] = np.zeros((91, 1024), np.float32)
    with pytest.raises(
        ValueError, match=r"shape mismatches: .*roi_heads\.box_predictor\.cls_score\.weight"
    ):
        convert.from_detectron2(model, bad)
    missing = {k: x for k, x in sd.items() if k != "backbone.fpn_lateral4.bias"}
    with pytest.raises(ValueError, match=r"missing keys: \['backbone\.fpn_lateral4\.bias'\]"):
        convert.from_detectron2(model, missing)
    with pytest.raises(ValueError, match=r"unexpected keys: \['roi_heads\.mask_head\.x'\]"):
        convert.from_detectron2(model, {**sd, "roi_heads.mask_head.x": np.zeros(1)})


def test_pickle_loader_refuses_code(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"a": np.zeros(2)}, "f": print}, f)
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        convert.load_pickle(str(path))


TINY = dict(num_classes=3, stem_channels=8, fpn_channels=8, fc_dim=16)


def test_layouts_compute_as_pytorch():
    """Converted conv (stride 2, padding 3), FrozenBN and box head (NCHW flatten) equal the
    PyTorch computations on the same weights (float64 NumPy / torch references)."""
    torch = pytest.importorskip("torch")
    model = rcnn.get_detector("faster_rcnn_r18_fpn", **TINY)
    keys = detector_keys(18, 3, width=8, fpn=8, fc=16)
    sd = _random(keys, seed=1)
    for k in sd:
        if k.endswith("running_var"):
            sd[k] = np.abs(sd[k]) + 0.5
    v = convert.from_detectron2(model, sd)
    x = np.random.default_rng(2).standard_normal((1, 32, 32, 3)).astype(np.float32)

    stem_vars = {
        "params": {},
        "frozen": jax.tree.map(jnp.asarray, v["frozen"]["backbone"]["bottom_up"]["stem"]["conv1"]),
    }
    ours = backbone.Conv2d(8, 7, 2, frozen=True).apply(stem_vars, jnp.asarray(x))
    p = "backbone.bottom_up.stem.conv1"
    t = torch.nn.functional.conv2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2)),
        torch.from_numpy(sd[f"{p}.weight"]),
        stride=2,
        padding=3,
    )
    scale = sd[f"{p}.norm.weight"] / np.sqrt(sd[f"{p}.norm.running_var"] + 1e-5)
    shift = sd[f"{p}.norm.bias"] - sd[f"{p}.norm.running_mean"] * scale
    ref = t.numpy() * scale[None, :, None, None] + shift[None, :, None, None]
    np.testing.assert_allclose(ours, ref.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)

    pooled = np.random.default_rng(3).standard_normal((2, 5, 7, 7, 8)).astype(np.float32)
    head = {"params": jax.tree.map(jnp.asarray, v["params"]["roi_heads"]["box_head"])}
    ours = roi_heads.BoxHead(16).apply(head, jnp.asarray(pooled))
    flat = pooled.transpose(0, 1, 4, 2, 3).reshape(2, 5, -1)  # PyTorch's NCHW flatten
    h = np.maximum(
        flat @ sd["roi_heads.box_head.fc1.weight"].T + sd["roi_heads.box_head.fc1.bias"], 0
    )
    h = np.maximum(h @ sd["roi_heads.box_head.fc2.weight"].T + sd["roi_heads.box_head.fc2.bias"], 0)
    np.testing.assert_allclose(ours, h, rtol=1e-4, atol=1e-4)


def _torchvision_names(d2_keys):
    """Inverse of detectron2's convert-torchvision-to-d2 renaming, plus fc and counters."""
    out = {}
    for k, shape in d2_keys.items():
        t = k.replace("stem.conv1.norm.", "bn1.").replace("stem.conv1.", "conv1.")
        for s in range(2, 6):
            t = t.replace(f"res{s}.", f"layer{s - 1}.")
        t = t.replace("shortcut.norm.", "downsample.1.").replace("shortcut.", "downsample.0.")
        for j in range(1, 4):
            t = t.replace(f"conv{j}.norm.", f"bn{j}.")
        out[t] = shape
    return out


def _c2_names(d2_keys):
    """detectron2 names -> Caffe2 MSRA blob names (no BN statistics, as in R-50.pkl)."""
    out = {}
    for k, shape in d2_keys.items():
        if k.endswith(("running_mean", "running_var")):
            continue
        t = k.replace("stem.conv1.norm.", "res_conv1_bn_").replace("stem.conv1.", "conv1_")
        for d2, c2 in (
            ("shortcut", "branch1"),
            ("conv1", "branch2a"),
            ("conv2", "branch2b"),
            ("conv3", "branch2c"),
        ):
            t = t.replace(f".{d2}.norm.", f"_{c2}_bn_").replace(f".{d2}.", f"_{c2}_")
        t = t.replace(".", "_")
        t = t.replace("_bn_weight", "_bn_s").replace("_bn_bias", "_bn_b")
        t = t.replace("_weight", "_w").replace("_bias", "_b")
        out[t] = shape
    return out


@pytest.mark.parametrize("layout", ["torchvision", "c2", "detectron2"])
@pytest.mark.integration  # heavy: the second tier
def test_imagenet_backbones_load(layout):
    depth = 50
    model = rcnn.get_detector("faster_rcnn_r50_fpn", **TINY)
    d2 = resnet_keys(depth, width=8)
    names = {"torchvision": _torchvision_names, "c2": _c2_names, "detectron2": dict}[layout](d2)
    sd = _random(names, seed=4)
    if layout == "torchvision":
        sd["fc.weight"] = np.zeros((1000, 256), np.float32)
        sd["fc.bias"] = np.zeros((1000,), np.float32)
        sd["bn1.num_batches_tracked"] = np.zeros((), np.int64)
        bn_weight = sd["layer2.0.bn3.weight"]
        kernel = sd["layer3.1.conv2.weight"]
    elif layout == "c2":
        sd["fc1000_w"] = np.zeros((1000, 256), np.float32)
        bn_weight = sd["res3_0_branch2c_bn_s"]
        kernel = sd["res4_1_branch2b_w"]
    else:
        bn_weight = sd["res3.0.conv3.norm.weight"]
        kernel = sd["res4.1.conv2.weight"]
    # Stand-in detector variables (shapes only matter; a real init compiles for minutes).
    variables = jax.tree.map(
        lambda s: np.full(s.shape, 0.5, s.dtype), rcnn.abstract_variables(model)
    )
    out = convert.load_backbone(model, variables, sd)
    bu_f = out["frozen"]["backbone"]["bottom_up"]
    np.testing.assert_array_equal(bu_f["res3_0"]["conv3"]["norm"]["weight"], bn_weight)
    np.testing.assert_array_equal(
        out["params"]["backbone"]["bottom_up"]["res4_1"]["conv2"]["kernel"],
        kernel.transpose(2, 3, 1, 0),
    )
    if layout == "c2":
        np.testing.assert_array_equal(bu_f["stem"]["conv1"]["norm"]["running_var"], np.ones(8))
    # The rest of the detector is untouched.
    np.testing.assert_array_equal(
        out["params"]["roi_heads"]["box_head"]["fc1"]["kernel"],
        variables["params"]["roi_heads"]["box_head"]["fc1"]["kernel"],
    )
    assert jax.tree.structure(out) == jax.tree.structure(variables)
    broken = dict(sd)
    broken.pop(next(k for k in sd if "res5" in k or "layer4" in k))
    with pytest.raises(ValueError, match="missing keys: \\['backbone.bottom_up.res5"):
        convert.load_backbone(model, variables, broken)


def test_convert_file_writes_orbax_variables(tmp_path):
    from luminet_jax import checkpoint

    keys = detector_keys(18, 3, width=8, fpn=8, fc=16)
    sd = _random(keys, seed=5)
    path = tmp_path / "model_final_tiny.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": sd, "__author__": "Detectron2 Model Zoo"}, f)
    fields = {k: v for k, v in TINY.items() if k != "num_classes"}
    out = convert.convert_file(
        "faster_rcnn_r18_fpn", str(path), str(tmp_path / "out"), num_classes=3, **fields
    )
    loaded = checkpoint.load_variables(out)
    np.testing.assert_array_equal(
        loaded["params"]["roi_heads"]["box_head"]["fc2"]["kernel"],
        sd["roi_heads.box_head.fc2.weight"].T,
    )
    np.testing.assert_array_equal(
        loaded["frozen"]["backbone"]["bottom_up"]["res2_1"]["conv2"]["norm"]["bias"],
        sd["backbone.bottom_up.res2.1.conv2.norm.bias"],
    )


@pytest.mark.integration  # heavy: the second tier
def test_task_backbone_hook_puts_c2_weights_into_a_fresh_train_state(tmp_path):
    """config.student.backbone_checkpoint: tasks/detection.py's prepare_state hook."""
    from luminet_jax import optim
    from luminet_jax import state as state_lib
    from luminet_jax.tasks import detection as task

    model = rcnn.get_detector("faster_rcnn_r50_fpn", **TINY)
    sd = _random(_c2_names(resnet_keys(50, width=8)), seed=7)
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": sd}, f)
    with pytest.raises(FileNotFoundError, match="backbone_checkpoint .*missing.pkl"):
        task._backbone_loader(model, str(tmp_path / "missing.pkl"), None)
    tx = optim.make_optimizer(learning_rate=0.01, momentum=0.9, weight_decay=1e-4)
    variables = jax.tree.map(
        lambda s: np.full(s.shape, 0.5, s.dtype), rcnn.abstract_variables(model)
    )
    state = state_lib.create_train_state(
        {"params": variables["params"], "batch_stats": variables["frozen"]}, tx
    )
    prepared = task._backbone_loader(model, str(path), tx)(state)
    bottom_up = prepared.params["backbone"]["bottom_up"]
    np.testing.assert_array_equal(
        bottom_up["res4_1"]["conv2"]["kernel"], sd["res4_1_branch2b_w"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        prepared.batch_stats["backbone"]["bottom_up"]["res3_0"]["conv3"]["norm"]["weight"],
        sd["res3_0_branch2c_bn_s"],
    )
    np.testing.assert_array_equal(  # the heads keep their init
        prepared.params["roi_heads"]["box_head"]["fc1"]["kernel"],
        variables["params"]["roi_heads"]["box_head"]["fc1"]["kernel"],
    )
    assert int(prepared.step) == 0
    assert jax.tree.structure(prepared.opt_state) == jax.tree.structure(state.opt_state)
