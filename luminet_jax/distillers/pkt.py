"""Probabilistic knowledge transfer (Passalis and Tefas, 2018) on the pooled features."""

from __future__ import annotations

import dataclasses

import jax

from luminet_jax.distillers import feature_base, feature_losses


@dataclasses.dataclass(frozen=True, kw_only=True)
class PKT(feature_base.RelationalDistiller):
    """loss = ce_weight * CE + feat_weight * pkt_loss(pooled_s, pooled_t), global batch."""

    ce_weight: float = 1.0
    feat_weight: float = 30000.0
    eps: float = 1e-7

    def embeddings(self, feats, role: str) -> jax.Array:
        return feature_base.feature(feats, "pooled", owner="PKT", role=role)

    def relation_loss(self, s: jax.Array, t: jax.Array, axis_name) -> jax.Array:
        return feature_losses.pkt_loss(s, t, eps=self.eps, axis_name=axis_name)
