"""Shared pieces of the feature-based distillers: feature lookup with start-up errors, map
pooling and resizing, the global-batch helpers and running the learnable connectors.

Features are the models' `feats` dicts (NHWC maps "stem", "stage{i}", "stage{i}_preact" and
the (B, C) "pooled"). mdistiller's `feats["feats"]` list is ["stem", "stage1", ...], so its
`feats[1:]` is every "stage{i}" and `preact_feats[1:]` every "stage{i}_preact".
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from luminet_jax.distillers import base, common, feature_losses

_STAGE = re.compile(r"^stage(\d+)$")


class FeatureDistiller(base.Distiller):
    """A distiller that reads both models' features (`init` checks they hold its keys)."""

    uses_feats: ClassVar[bool] = True

    def init(self, rng, s_feats, t_feats, **kwargs) -> dict[str, Any]:
        """Checks that the features hold what the method reads; {} (nothing learnable)."""
        del rng, kwargs
        self.check_feats(s_feats, t_feats)
        return {}

    def check_feats(self, s_feats, t_feats) -> None:  # Overridden: the method's keys.
        del s_feats, t_feats


class StageDistiller(FeatureDistiller):
    """A loss over every stage pair ("stage1".."stageN", mdistiller's `feats[1:]`).

    Subclasses are dataclasses with `ce_weight` and `feat_weight` and define
    `stage_loss(f_s, f_t)` on the lists of maps. The loss must be a per-sample mean (or a
    per-sample sum over the batch size), so that the pmean of the per-shard losses is the
    global-batch loss.
    """

    def stage_loss(self, f_s: list[jax.Array], f_t: list[jax.Array]) -> jax.Array:
        raise NotImplementedError

    def check_feats(self, s_feats, t_feats) -> None:
        owner = type(self).__name__
        s = stage_keys(s_feats, owner=owner, role="student")
        t = stage_keys(t_feats, owner=owner, role="teacher")
        if len(s) != len(t):
            raise ValueError(f"{owner} pairs stages one to one; student has {s}, teacher {t}.")

    def loss(self, x: base.Inputs) -> base.LossOutput:
        owner = type(self).__name__
        self.check_feats(x.s_feats, x.t_feats)
        f_s = student_side(stage_list(x.s_feats, owner=owner, role="student"))
        f_t = teacher_side(stage_list(x.t_feats, owner=owner, role="teacher"))
        kd = self.feat_weight * global_mean(self.stage_loss(f_s, f_t), x.axis_name)
        return output(x, kd, ce_weight=self.ce_weight)


class RelationalDistiller(FeatureDistiller):
    """A loss over relations between the samples of the batch (RKD, PKT, SP).

    The relations span the global batch: under shard_map the pure losses all-gather both
    models' embeddings over the data axis, every shard computes the same global loss, and
    the gradient reaches each shard's rows through the gather's transpose, so 8 devices
    equal one. Subclasses define `embeddings(feats, role)` and `relation_loss(s, t, axis)`.
    """

    def embeddings(self, feats: dict[str, jax.Array] | None, role: str) -> jax.Array:
        raise NotImplementedError

    def relation_loss(self, s: jax.Array, t: jax.Array, axis_name: str | None) -> jax.Array:
        """The global-batch loss (the pure losses gather over `axis_name` themselves)."""
        raise NotImplementedError

    def check_feats(self, s_feats, t_feats) -> None:
        self.embeddings(s_feats, "student")
        self.embeddings(t_feats, "teacher")

    def loss(self, x: base.Inputs) -> base.LossOutput:
        s = student_side(self.embeddings(x.s_feats, "student"))
        t = teacher_side(self.embeddings(x.t_feats, "teacher"))
        kd = self.feat_weight * self.relation_loss(s, t, x.axis_name)
        return output(x, kd, ce_weight=self.ce_weight)


def feature(feats: dict[str, jax.Array] | None, key: str, *, owner: str, role: str) -> jax.Array:
    """`feats[key]`, or a KeyError naming the key, the model role and the available keys."""
    if feats is None:
        raise ValueError(f"{owner} reads the {role}'s features, but none were passed.")
    if key not in feats:
        raise KeyError(
            f"{owner} needs feature {key!r} of the {role}, which has only {sorted(feats)}."
        )
    return feats[key]


def stage_keys(
    feats: dict[str, jax.Array] | None, *, preact: bool = False, owner: str, role: str
) -> list[str]:
    """The "stage{i}" keys in stage order (or their "_preact" twins, which must all exist)."""
    if feats is None:
        raise ValueError(f"{owner} reads the {role}'s features, but none were passed.")
    stages = sorted((int(m.group(1)), k) for k in feats if (m := _STAGE.match(k)))
    if not stages:
        raise KeyError(
            f"{owner} needs 'stage{{i}}' features of the {role}; it has {sorted(feats)}."
        )
    keys = [k for _, k in stages]
    if preact:
        keys = [f"{k}_preact" for k in keys]
        for key in keys:
            feature(feats, key, owner=owner, role=role)
    return keys


def stage_list(feats, *, preact: bool = False, owner: str, role: str) -> list[jax.Array]:
    """The stage maps in order (mdistiller's `feats[1:]` or `preact_feats[1:]`)."""
    return [feats[k] for k in stage_keys(feats, preact=preact, owner=owner, role=role)]


def hint_keys(feats, *, owner: str, role: str) -> list[str]:
    """mdistiller's `feats["feats"]` order: ["stem", "stage1", ..., "stageN"]."""
    feature(feats, "stem", owner=owner, role=role)
    return ["stem", *stage_keys(feats, owner=owner, role=role)]


# PyTorch's adaptive average pooling, and mdistiller's "pool the larger map" rule.
adaptive_avg_pool = feature_losses.adaptive_avg_pool
pool_to_smaller = feature_losses.pool_to_smaller


def nearest_resize(x: jax.Array, size: int) -> jax.Array:
    """(B, H, W, C) -> (B, size, size, C), PyTorch's `interpolate(mode="nearest")`."""
    h, w = x.shape[1:3]
    if (h, w) == (size, size):
        return x
    if size % h == 0 and size % w == 0:  # An integer upsampling: repeat (no gather).
        return jnp.repeat(jnp.repeat(x, size // h, axis=1), size // w, axis=2)
    rows = (np.arange(size) * h) // size  # floor(dst * in / out)
    cols = (np.arange(size) * w) // size
    return x[:, rows][:, :, cols]


def as_map(pooled: jax.Array) -> jax.Array:
    """(B, C) pooled features -> (B, 1, 1, C)."""
    return pooled[:, None, None, :]


def teacher_side(x: Any) -> Any:
    """The teacher's features cast to float32 or wider, without gradient."""
    return jax.tree.map(lambda a: lax.stop_gradient(common.to_float(a)), x)


def student_side(x: Any) -> Any:
    return jax.tree.map(common.to_float, x)


def param_dtype(x: jax.Array) -> jnp.dtype:
    """Parameters of a connector: float32, or float64 for float64 features (x64 tests)."""
    return jnp.promote_types(jnp.asarray(x).dtype, jnp.float32)


def global_mean(x: jax.Array, axis_name: str | None) -> jax.Array:
    """A per-shard batch mean made the global-batch mean (equal shards)."""
    return x if axis_name is None else lax.pmean(x, axis_name)


def extra_of(extra: dict[str, Any] | None, owner: str) -> tuple[Any, Any]:
    """(params, state) from the step's `extra`, with a clear error when it is missing."""
    if not extra or "params" not in extra:
        raise ValueError(f"{owner} owns learnable modules: pass extra={{'params', 'state'}}.")
    return extra["params"], extra.get("state") or {}


def run_train_mode(module: nn.Module, params: Any, state: Any, *args: Any) -> tuple[Any, Any]:
    """Applies a connector in train mode: (outputs, new state with the new BN statistics)."""
    variables = {"params": params, **state}
    if "batch_stats" not in state:
        return module.apply(variables, *args, train=True), state
    out, mutated = module.apply(variables, *args, train=True, mutable=["batch_stats"])
    return out, {**state, "batch_stats": mutated["batch_stats"]}


def init_module(module: nn.Module, rng: jax.Array, *args: Any) -> dict[str, Any]:
    """{"params", "state"} of a connector (BN statistics in "state"; no update at init)."""
    variables = module.init(rng, *args, train=False)
    params = variables.get("params", {})
    state = {k: v for k, v in variables.items() if k != "params"}
    return {"params": params, "state": state}


def output(
    x: base.Inputs, kd: jax.Array, *, ce_weight: float, state: Any = None
) -> base.LossOutput:
    """LossOutput with the weighted CE of `x`'s student logits ("loss_ce") and the method's
    weighted term ("loss_kd")."""
    common.check_logits(x.s_logits, labels=x.labels)
    ce = ce_weight * common.softmax_xent(x.s_logits, x.labels, axis_name=x.axis_name)
    kd = kd.astype(ce.dtype)
    return base.LossOutput(total=ce + kd, parts={"loss_ce": ce, "loss_kd": kd}, state=state)
