"""Variational information distillation (Ahn et al., 2019) on every stage, as mdistiller's VID:
per stage a 1x1-conv regressor predicts the teacher's map, under a learned per-channel variance."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from luminet_jax.distillers import feature_base as fb
from luminet_jax.distillers import feature_losses

# PyTorch's default Conv2d weight init: U(+-1/sqrt(fan_in)).
_TORCH_CONV_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class VIDRegressors(nn.Module):
    """One regressor per stage, conv1x1(s->t), ReLU, conv1x1(t->t), ReLU, conv1x1(t->t), all
    without bias, and one log-scale vector per stage (softplus(log_scale) + eps = variance)."""

    t_channels: tuple[int, ...]
    init_pred_var: float = 5.0
    eps: float = 1e-5
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, f_s: list[jax.Array], *, train: bool) -> tuple[list, list]:
        del train  # No BatchNorm.
        means, log_scales = [], []
        # softplus^-1(init_pred_var - eps), so that the initial variance is init_pred_var.
        start = math.log(math.expm1(self.init_pred_var - self.eps))
        for i, (x, t) in enumerate(zip(f_s, self.t_channels)):
            conv = lambda name, t=t, dtype=x.dtype: nn.Conv(  # noqa: E731
                t,
                (1, 1),
                use_bias=False,
                kernel_init=_TORCH_CONV_INIT,
                dtype=dtype,
                param_dtype=self.param_dtype,
                name=name,
            )
            h = nn.relu(conv(f"regressor{i}_conv0")(x))
            h = nn.relu(conv(f"regressor{i}_conv1")(h))
            means.append(conv(f"regressor{i}_conv2")(h))
            init = lambda key, shape, dtype: jnp.full(shape, start, dtype)  # noqa: E731
            log_scales.append(self.param(f"log_scale{i}", init, (t,), self.param_dtype))
        return means, log_scales


@dataclasses.dataclass(frozen=True, kw_only=True)
class VID(fb.FeatureDistiller):
    """loss = ce_weight * CE + feat_weight * sum over stages of vid_loss.

    Per stage the taller map is pooled to the other's size, the student's goes through the
    regressor, and the Gaussian negative log-likelihood of the teacher's map is averaged.
    Reference: mdistiller keeps the log-scales in a plain Python list, so its optimizer never
    sees them; here they are learned with the regressors (as in RepDistiller and the paper).
    """

    ce_weight: float = 1.0
    feat_weight: float = 1.0
    init_pred_var: float = 5.0
    eps: float = 1e-5

    def _pairs(self, s_feats, t_feats) -> tuple[list, list]:
        f_s = fb.stage_list(s_feats, owner="VID", role="student")
        f_t = fb.stage_list(t_feats, owner="VID", role="teacher")
        if len(f_s) != len(f_t):
            raise ValueError(
                f"VID pairs stages one to one; the student has {len(f_s)}, the teacher {len(f_t)}."
            )
        pairs = [fb.pool_to_smaller(s, t) for s, t in zip(f_s, f_t)]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def _module(self, f_t: list, param_dtype) -> VIDRegressors:
        return VIDRegressors(
            t_channels=tuple(int(t.shape[-1]) for t in f_t),
            init_pred_var=self.init_pred_var,
            eps=self.eps,
            param_dtype=param_dtype,
        )

    def init(self, rng, s_feats, t_feats, **kwargs) -> dict[str, Any]:
        """The regressors and log-scales, sized from the stages' channels.

        Reference: mdistiller probes the shapes in train mode (moving the teacher's BatchNorm
        running statistics); the trainer's features here come from inference mode.
        """
        del kwargs
        f_s, f_t = self._pairs(s_feats, t_feats)
        if not self.init_pred_var > self.eps:
            raise ValueError(f"VID: init_pred_var must exceed eps; got {self.init_pred_var}.")
        module = self._module(f_t, fb.param_dtype(f_s[0]))
        return fb.init_module(module, rng, f_s)

    def loss(self, x: fb.base.Inputs) -> fb.base.LossOutput:
        params, state = fb.extra_of(x.extra, "VID")
        f_s, f_t = self._pairs(fb.student_side(x.s_feats), fb.teacher_side(x.t_feats))
        (means, log_scales), _ = fb.run_train_mode(
            self._module(f_t, fb.param_dtype(f_s[0])), params, state, f_s
        )
        loss = sum(
            feature_losses.vid_loss(m, t, ls, eps=self.eps)
            for m, t, ls in zip(means, f_t, log_scales)
        )
        kd = self.feat_weight * fb.global_mean(loss, x.axis_name)
        return fb.output(x, kd, ce_weight=self.ce_weight)
