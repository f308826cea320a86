"""Self-supervised KD with SVD (Lee et al., 2018) on every stage, as mdistiller's KDSVD."""

from __future__ import annotations

import dataclasses

import jax

from luminet_jax.distillers import feature_base, feature_losses


@dataclasses.dataclass(frozen=True, kw_only=True)
class KDSVD(feature_base.StageDistiller):
    """loss = ce_weight * CE + feat_weight * kdsvd_loss over "stage1".."stageN" (feats[1:])."""

    ce_weight: float = 1.0
    feat_weight: float = 1.0
    k: int = 1

    def stage_loss(self, f_s: list[jax.Array], f_t: list[jax.Array]) -> jax.Array:
        return feature_losses.kdsvd_loss(f_s, f_t, k=self.k)
