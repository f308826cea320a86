"""detectron2 checkpoints -> FasterRCNN variables; ImageNet ResNet weights -> its backbone.

A Flax leaf `(collection, m1, ..., mk, leaf)` (collection "params" or "frozen") is the
detectron2 key

    ".".join(re.sub(r"_(\\d+)", r".\\1", m) for m in (m1, ..., mk)) + "." + leaf'

with leaf' = "weight" for "kernel" (conv OIHW -> HWIO, linear (out, in) -> (in, out)) and
the leaf itself otherwise (bias, and FrozenBatchNorm's weight / bias / running_mean /
running_var), e.g. frozen/backbone/bottom_up/res2_0/conv1/norm/running_var ->
`backbone.bottom_up.res2.0.conv1.norm.running_var`, params/roi_heads/box_head/fc1/kernel ->
`roi_heads.box_head.fc1.weight` (fc1 takes PyTorch's (C, 7, 7) flatten order; `roi_heads`).

Checkpoint keys without a variable that are ignored: `*num_batches_tracked`, `pixel_mean`,
`pixel_std` and `proposal_generator.anchor_generator.*` (buffers, recomputed here).

Files: the model zoo's `model_final_*.pkl` (a pickle {"model": {name: ndarray}, "__author__",
...}, read with an unpickler that admits only numpy arrays and plain containers), a
detectron2 training output `.pth` ({"model": state_dict}), or a plain state_dict; all read
without torch (`luminet_jax.torch_files`).

ImageNet backbones (`load_backbone`): torchvision's ResNet state_dicts (renamed as detectron2's
tools/convert-torchvision-to-d2.py does; R-50/101 from torchvision need
`stride_in_1x1=False`), detectron2's C2 MSRA pickles (`R-50.pkl`: `res2_0_branch2a_w`, ...,
renamed as its c2_model_loading does; their BatchNorm is an affine without statistics, so
mean 0 / var 1 as detectron2's FrozenBatchNorm loads them), or detectron2-named backbones.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from luminet_jax import torch_files
from luminet_jax.detection import rcnn
from luminet_jax.models import torch_convert

IGNORED_PREFIXES = ("proposal_generator.anchor_generator.",)
IGNORED_KEYS = ("pixel_mean", "pixel_std")
IGNORED_SUFFIX = "num_batches_tracked"
COLLECTIONS = ("params", "frozen")
BOTTOM_UP = ("backbone", "bottom_up")


def detectron2_key(path: tuple[str, ...]) -> str:
    """The detectron2 key of a Flax leaf path (modules..., leaf), collection excluded."""
    *modules, leaf = path
    names = [re.sub(r"_(\d+)", r".\1", m) for m in modules]
    return ".".join([*names, "weight" if leaf == "kernel" else leaf])


def _to_flax_layout(leaf: str, value: np.ndarray) -> np.ndarray:
    if leaf == "kernel":
        if value.ndim == 4:  # OIHW -> HWIO
            return np.ascontiguousarray(np.transpose(value, (2, 3, 1, 0)))
        if value.ndim == 2:  # (out, in) -> (in, out)
            return np.ascontiguousarray(value.T)
    return value


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (torch itself is not imported here)
        return value.detach().cpu().float().numpy()
    return np.asarray(value)


def _ignored(key: str) -> bool:
    return (
        key.endswith(IGNORED_SUFFIX)
        or key in IGNORED_KEYS
        or any(key.startswith(p) for p in IGNORED_PREFIXES)
    )


def _flat_leaves(abstract: Mapping[str, Any], under: tuple[str, ...] = ()):
    """[(collection, path, spec)] of the leaves of `abstract` below module path `under`."""
    out = []
    for collection in COLLECTIONS:
        tree = abstract.get(collection, {})
        for part in under:
            tree = tree.get(part, {})
        for key_path, spec in jax.tree_util.tree_flatten_with_path(tree)[0]:
            out.append((collection, (*under, *(str(k.key) for k in key_path)), spec))
    return out


def _assign(
    leaves, state_dict: Mapping[str, np.ndarray], *, what: str, defaults=None
) -> dict[str, Any]:
    """Fills the leaves from `state_dict`; raises naming missing/unexpected/mismatched keys."""
    defaults = defaults or {}
    variables: dict[str, Any] = {c: {} for c in COLLECTIONS}
    used, missing, mismatched = set(), [], []
    for collection, path, spec in leaves:
        key = detectron2_key(path)
        if key in state_dict:
            used.add(key)
            raw = state_dict[key]
            value = _to_flax_layout(path[-1], raw)
        elif key in defaults:
            raw = value = defaults[key]
        else:
            missing.append(key)
            continue
        if tuple(value.shape) != tuple(spec.shape):
            mismatched.append(
                f"{key}: checkpoint {tuple(raw.shape)} -> {tuple(value.shape)}, model "
                f"{'/'.join((collection, *path))} expects {tuple(spec.shape)}"
            )
            continue
        node = variables[collection]
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = np.asarray(value, spec.dtype)
    extra = sorted(k for k in state_dict if k not in used and not _ignored(k))
    torch_convert.check_keys(f"Cannot load {what}", missing, extra, mismatched)
    return variables


def from_detectron2(model: rcnn.FasterRCNN, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A detectron2 Faster R-CNN state_dict (detectron2 names) -> {"params", "frozen"}.

    Raises:
      ValueError: naming every missing key, every unexpected key (other than the ignored
        buffers in the module docstring) and every shape mismatch.
    """
    sd = {k: _to_numpy(v) for k, v in state_dict.items()}
    leaves = _flat_leaves(rcnn.abstract_variables(model))
    return _assign(leaves, sd, what=f"a detectron2 checkpoint into {_describe(model)}")


def _describe(model: rcnn.FasterRCNN) -> str:
    return f"FasterRCNN(depth={model.depth}, num_classes={model.num_classes})"


# ---- ImageNet backbones ------------------------------------------------------------------


def torchvision_to_detectron2(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """torchvision ResNet names -> detectron2 backbone names (its convert-torchvision-to-d2
    rules); the classifier `fc.*` is dropped."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("fc.") or key.endswith(IGNORED_SUFFIX):
            continue
        k = key if "layer" in key else "stem." + key
        for t in range(1, 5):
            k = k.replace(f"layer{t}.", f"res{t + 1}.")
        for t in range(1, 4):
            k = k.replace(f"bn{t}.", f"conv{t}.norm.")
        k = k.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
        out[k] = _to_numpy(value)
    return out


def c2_to_detectron2(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Caffe2 MSRA ResNet names (`res2_0_branch2a_w`, `res_conv1_bn_s`, ...) -> detectron2's
    (c2_model_loading's basic rules); `fc1000_*` and `*_momentum` are dropped."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("fc1000") or key.endswith("_momentum"):
            continue
        k = key.replace("_", ".")
        k = re.sub(r"\.b$", ".bias", k)
        k = re.sub(r"\.w$", ".weight", k)
        k = re.sub(r"bn\.s$", "norm.weight", k)
        k = re.sub(r"bn\.bias$", "norm.bias", k)
        k = re.sub(r"bn\.rm$", "norm.running_mean", k)
        k = re.sub(r"bn\.riv$", "norm.running_var", k)
        k = re.sub(r"^res\.conv1\.norm\.", "conv1.norm.", k)
        k = re.sub(r"^conv1\.", "stem.conv1.", k)
        for c2, d2 in (
            ("branch1", "shortcut"),
            ("branch2a", "conv1"),
            ("branch2b", "conv2"),
            ("branch2c", "conv3"),
        ):
            k = k.replace(f".{c2}.", f".{d2}.")
        out[k] = _to_numpy(value)
    return out


def backbone_layout(state_dict: Mapping[str, Any]) -> str:
    """ "torchvision", "c2" or "detectron2", from the key names."""
    keys = list(state_dict)
    if any(k.startswith("layer1.") for k in keys):
        return "torchvision"
    if any(k.startswith("res2_") for k in keys):
        return "c2"
    return "detectron2"


def load_backbone(
    model: rcnn.FasterRCNN,
    variables: Mapping[str, Any],
    state_dict: Mapping[str, Any],
    *,
    layout: str = "auto",
) -> dict[str, Any]:
    """Replaces the ResNet (`backbone/bottom_up`) of `variables` by ImageNet weights.

    Args:
      model: the detector (its depth and widths must match the weights).
      variables: the detector's {"params", "frozen"} (the rest is kept).
      state_dict: torchvision, C2 or detectron2 (bare `stem.*`/`res2.*` or
        `backbone.bottom_up.*`) backbone weights.
      layout: "auto" (from the names), "torchvision", "c2" or "detectron2".

    Returns:
      New variables (nested dicts; the ResNet's leaves numpy arrays).
    """
    layout = backbone_layout(state_dict) if layout == "auto" else layout
    convert = {"torchvision": torchvision_to_detectron2, "c2": c2_to_detectron2}
    if layout in convert:
        sd = convert[layout](state_dict)
    elif layout == "detectron2":
        sd = {re.sub(r"^backbone\.bottom_up\.", "", k): _to_numpy(v) for k, v in state_dict.items()}
        sd = {k: v for k, v in sd.items() if not k.startswith(("fc.", "linear."))}
    else:
        raise ValueError(f"Unknown backbone layout {layout!r}")
    prefix = ".".join(BOTTOM_UP) + "."
    sd = {prefix + k: v for k, v in sd.items()}
    leaves = _flat_leaves(rcnn.abstract_variables(model), BOTTOM_UP)
    defaults = {}
    if layout == "c2":  # affine-only BatchNorm: statistics as FrozenBatchNorm's old loader
        for _, path, spec in leaves:
            if path[-1] in ("running_mean", "running_var"):
                fill = 0.0 if path[-1] == "running_mean" else 1.0
                defaults[detectron2_key(path)] = np.full(spec.shape, fill, spec.dtype)
    loaded = _assign(
        leaves, sd, what=f"{layout} backbone weights into {_describe(model)}", defaults=defaults
    )
    out = jax.tree.map(lambda x: x, dict(variables))  # copy the containers
    for collection in COLLECTIONS:
        out[collection] = dict(out[collection])
        bb = dict(out[collection]["backbone"])
        bb["bottom_up"] = loaded[collection]["backbone"]["bottom_up"]
        out[collection]["backbone"] = bb
    return out


# ---- files -------------------------------------------------------------------------------


def load_pickle(path: str) -> dict[str, np.ndarray]:
    """A detectron2 model zoo / C2 `.pkl` -> {name: ndarray} (its "model" or "blobs" entry).

    Raises:
      FileNotFoundError: no file at `path`.
      pickle.UnpicklingError: the pickle names anything but NumPy arrays and containers.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint at {path!r}.")
    return torch_files.state_dict_of(torch_files.read_pickle(path), source=repr(path))


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """A `.pkl` (`load_pickle`) or a torch file (`torch_files.load_state_dict`, no torch)."""
    if path.endswith(".pkl"):
        return load_pickle(path)
    return torch_files.load_state_dict(path)


def convert_file(name: str, path: str, out: str, *, num_classes: int = 80, **fields) -> str:
    """`python -m luminet_jax.convert` for detectors: checkpoint file -> orbax variables.

    Args:
      name: a key of `rcnn.DETECTORS` (e.g. "faster_rcnn_r101_fpn").
      path: the detectron2 checkpoint (.pkl / .pth).
      out: the output directory (`checkpoint.save_variables`).
      num_classes, fields: the detector's fields.

    Returns:
      The absolute output path.
    """
    model = rcnn.get_detector(name, num_classes=num_classes, **fields)
    variables = from_detectron2(model, load_state_dict(path))
    from luminet_jax import checkpoint  # orbax only when writing

    out = os.path.abspath(out)
    checkpoint.save_variables(out, variables)
    return out
