"""Relational KD (Park et al., 2019): distance and angle relations of the pooled features."""

from __future__ import annotations

import dataclasses

import jax

from luminet_jax.distillers import feature_base, feature_losses


@dataclasses.dataclass(frozen=True, kw_only=True)
class RKD(feature_base.RelationalDistiller):
    """loss = ce_weight * CE + feat_weight * rkd_loss(pooled_s, pooled_t), global batch."""

    ce_weight: float = 1.0
    feat_weight: float = 1.0
    distance_weight: float = 25.0
    angle_weight: float = 50.0
    squared: bool = False
    eps: float = 1e-12

    def embeddings(self, feats, role: str) -> jax.Array:
        return feature_base.feature(feats, "pooled", owner="RKD", role=role)

    def relation_loss(self, s: jax.Array, t: jax.Array, axis_name) -> jax.Array:
        return feature_losses.rkd_loss(
            s,
            t,
            distance_weight=self.distance_weight,
            angle_weight=self.angle_weight,
            squared=self.squared,
            eps=self.eps,
            axis_name=axis_name,
        )
