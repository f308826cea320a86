"""Neuron selectivity transfer (Huang and Wang, 2017) on every stage, as mdistiller's NST."""

from __future__ import annotations

import dataclasses

import jax

from luminet_jax.distillers import feature_base, feature_losses


@dataclasses.dataclass(frozen=True, kw_only=True)
class NST(feature_base.StageDistiller):
    """loss = ce_weight * CE + feat_weight * nst_loss over "stage1".."stageN" (feats[1:])."""

    ce_weight: float = 1.0
    feat_weight: float = 50.0

    def stage_loss(self, f_s: list[jax.Array], f_t: list[jax.Array]) -> jax.Array:
        return feature_losses.nst_loss(f_s, f_t)
