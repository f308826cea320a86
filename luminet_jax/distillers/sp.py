"""Similarity-preserving KD (Tung and Mori, 2019) on the last stage, as mdistiller's SP."""

from __future__ import annotations

import dataclasses

import jax

from luminet_jax.distillers import feature_base, feature_losses


@dataclasses.dataclass(frozen=True, kw_only=True)
class SP(feature_base.RelationalDistiller):
    """loss = ce_weight * CE + feat_weight * sp_loss on the last "stage{i}" (feats[-1]).

    The batch Gram matrices span the global batch (sp_loss all-gathers the maps).
    """

    ce_weight: float = 1.0
    feat_weight: float = 3000.0

    def embeddings(self, feats, role: str) -> jax.Array:
        keys = feature_base.stage_keys(feats, owner="SP", role=role)
        return feats[keys[-1]]

    def relation_loss(self, s: jax.Array, t: jax.Array, axis_name) -> jax.Array:
        return feature_losses.sp_loss([s], [t], axis_name=axis_name)
