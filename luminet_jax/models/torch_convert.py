"""PyTorch state_dict -> Flax variables for every model in the zoo, by one generic key rule.

A Flax leaf at `(collection, m1, ..., mk, leaf)` maps to the PyTorch key

    ".".join(re.sub(r"_(\\d+)", r".\\1", m) for m in (m1, ..., mk)) + "." + torch_leaf

(`layer1_0/conv1` -> `layer1.0.conv1`), with

    params/kernel (N-D, N >= 3) <- weight, (O, I, *spatial) -> (*spatial, I, O)  [OIHW -> HWIO]
    params/kernel (2-D)         <- weight.T
    params/bias                 <- bias
    params/scale                <- weight   (BatchNorm / LayerNorm)
    params/<other>              <- <other>  (same shape, e.g. cls_token, pos_embed)
    batch_stats/mean            <- running_mean
    batch_stats/var             <- running_var

and `num_batches_tracked` entries ignored whether present or not. The models name their
submodules after the PyTorch references, so no family needs special cases. Should one ever
need them, `STATE_DICT_HOOKS[name]` rewrites a state_dict into the generic form first.

This module does not import torch: values may be numpy arrays or torch tensors (converted
with `.detach().cpu().numpy()`). Dtypes are preserved (float64 stays float64).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from luminet_jax import models

# canonical model name -> fn(state_dict of numpy arrays) -> state_dict in the generic layout.
STATE_DICT_HOOKS: Mapping[str, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]] = {}

_IGNORED_SUFFIX = "num_batches_tracked"
_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "bias"): "bias",
    ("params", "scale"): "weight",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def torch_key(collection: str, path: tuple[str, ...]) -> str:
    """The PyTorch key of the Flax leaf `collection/path` (see the module docstring).

    Args:
      collection: "params" or "batch_stats".
      path: module names then the leaf name, e.g. ("layer1_0", "conv1", "kernel").

    Returns:
      e.g. "layer1.0.conv1.weight".
    """
    *modules, leaf = path
    if collection == "batch_stats" and (collection, leaf) not in _LEAF_NAMES:
        raise ValueError(f"No PyTorch counterpart for batch_stats leaf {'/'.join(path)!r}")
    torch_leaf = _LEAF_NAMES.get((collection, leaf), leaf)
    prefix = [re.sub(r"_(\d+)", r".\1", m) for m in modules]
    return ".".join([*prefix, torch_leaf])


def _to_numpy(value: Any) -> np.ndarray:
    """A numpy copy of a torch tensor or array-like, keeping its dtype (bf16 via ml_dtypes)."""
    if hasattr(value, "detach"):  # a torch.Tensor; torch itself is never imported here
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            return value.float().numpy().astype(jnp.bfloat16)
        return value.numpy()
    return np.asarray(value)


def _from_torch_layout(collection: str, leaf: str, value: np.ndarray) -> np.ndarray:
    if collection == "params" and leaf == "kernel":
        if value.ndim == 2:
            return np.ascontiguousarray(value.T)
        if value.ndim >= 3:
            return np.ascontiguousarray(np.transpose(value, (*range(2, value.ndim), 1, 0)))
    return value


def _strip_module_prefix(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Drops a "module." prefix that nn.DataParallel adds to every key."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def abstract_variables(name: str, *, num_classes: int) -> dict[str, Any]:
    """The model's variables as ShapeDtypeStructs, at its `input_size` (no compute)."""
    model = models.get_model(name, num_classes=num_classes)
    size = models.input_size(name)
    dummy = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), dummy)


def from_torch(name: str, state_dict: Mapping[str, Any], *, num_classes: int) -> dict[str, Any]:
    """Converts a PyTorch reference state_dict into the Flax variables of model `name`.

    Args:
      name: a model name or alias of `models.MODELS`.
      state_dict: PyTorch key -> torch tensor or numpy array (the reference's
        `model.state_dict()`, e.g. mdistiller's checkpoint "model" entry or torchvision's).
        A "module." prefix on every key (nn.DataParallel) is dropped.
      num_classes: the classifier size the checkpoint was trained with.

    Returns:
      {"params": nested dict of numpy arrays, "batch_stats": nested dict (empty {} for a
      model without BatchNorm)}, with the state_dict's dtypes.

    Raises:
      ValueError: naming every missing PyTorch key, every unexpected one (other than
        `num_batches_tracked`) and every shape mismatch.
    """
    canonical = models.canonical_name(name)
    sd = {k: _to_numpy(v) for k, v in _strip_module_prefix(dict(state_dict)).items()}
    if canonical in STATE_DICT_HOOKS:
        sd = STATE_DICT_HOOKS[canonical](sd)
    abstract = abstract_variables(canonical, num_classes=num_classes)
    unsupported = set(abstract) - {"params", "batch_stats"}
    if unsupported:
        raise ValueError(
            f"Model {canonical!r} has collections without a PyTorch counterpart: "
            f"{sorted(unsupported)}"
        )

    variables: dict[str, Any] = {"params": {}, "batch_stats": {}}
    used, missing, mismatched = set(), [], []
    for collection in ("params", "batch_stats"):
        flat = jax.tree_util.tree_flatten_with_path(abstract.get(collection, {}))[0]
        for key_path, spec in flat:
            path = tuple(str(k.key) for k in key_path)
            key = torch_key(collection, path)
            if key not in sd:
                missing.append(key)
                continue
            used.add(key)
            value = _from_torch_layout(collection, path[-1], sd[key])
            if value.shape != tuple(spec.shape):
                mismatched.append(
                    f"{key}: PyTorch {tuple(sd[key].shape)} -> {value.shape}, "
                    f"model {'/'.join((collection, *path))} expects {tuple(spec.shape)}"
                )
                continue
            node = variables[collection]
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
    extra = sorted(k for k in sd if k not in used and not k.endswith(_IGNORED_SUFFIX))
    check_keys(
        f"Cannot convert state_dict for {canonical!r}", missing, extra, mismatched, kind="PyTorch "
    )
    return variables


def check_keys(
    what: str, missing: list[str], unexpected: list[str], mismatched: list[str], *, kind: str = ""
) -> None:
    """Raises one ValueError "`what`: missing / unexpected {kind}keys ...; shape mismatches ..."
    naming every problem of a checkpoint import (also detection.convert's); silent if none."""
    errors = [
        f"{label}: {items}"
        for label, items in (
            (f"missing {kind}keys", missing),
            (f"unexpected {kind}keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if items
    ]
    if errors:
        raise ValueError(f"{what}: " + "; ".join(errors))
