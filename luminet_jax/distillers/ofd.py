"""Overhaul of feature distillation (Heo et al., 2019), as mdistiller's OFD: pre-ReLU stage
features, conv+BN connectors on the student, a partial L2 against the teacher below margins
derived from the teacher's BatchNorm before each final ReLU."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from luminet_jax import models
from luminet_jax.distillers import common, feature_losses
from luminet_jax.distillers import feature_base as fb
from luminet_jax.models import layers


class Connectors(nn.Module):
    """Per stage: conv (k x k, stride 1, no bias, normal(0, sqrt(2 / (k*k*out)))) + BatchNorm."""

    t_channels: tuple[int, ...]
    kernel_size: int = 1
    axis_name: str | None = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, f_s: list[jax.Array], *, train: bool) -> list[jax.Array]:
        out = []
        for i, (x, t) in enumerate(zip(f_s, self.t_channels)):
            k = self.kernel_size
            conv = layers.conv(  # CONV_INIT is mdistiller's normal(0, sqrt(2 / (k*k*out))).
                t,
                k,
                1,
                (k - 1) // 2,
                dtype=x.dtype,
                param_dtype=self.param_dtype,
                name=f"connector{i}_conv",
            )
            norm = layers.batch_norm(
                train=train, axis_name=self.axis_name, dtype=x.dtype, param_dtype=self.param_dtype
            )
            out.append(norm(name=f"connector{i}_bn")(conv(x)))
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class OFD(fb.FeatureDistiller):
    """loss = ce_weight * CE + feat_weight * sum_i ofd_loss(c_i(s_i), pool(t_i), m_i) / 2^(n-1-i).

    Reads "stage{i}_preact" of both models (mdistiller's `preact_feats[1:]`), the last n stages
    of each where their counts differ; the teacher's map is average-pooled to the student's
    size. `teacher_train` (default True) runs the teacher's BatchNorm on batch statistics, as
    mdistiller's OFD.train() does (its running statistics are not kept: the teacher is
    frozen); False runs it in inference mode.
    """

    ce_weight: float = 1.0
    feat_weight: float = 1e-3
    kernel_size: int = 1
    teacher_train: bool = True

    def _pairs(self, s_feats, t_feats) -> tuple[list, list]:
        f_s = fb.stage_list(s_feats, preact=True, owner="OFD", role="student")
        f_t = fb.stage_list(t_feats, preact=True, owner="OFD", role="teacher")
        n = min(len(f_s), len(f_t))  # mdistiller's _align_list: the last n of each.
        return f_s[-n:], f_t[-n:]

    def _module(self, f_t, axis_name=None, param_dtype=jnp.float32) -> Connectors:
        return Connectors(
            t_channels=tuple(int(t.shape[-1]) for t in f_t),
            kernel_size=self.kernel_size,
            axis_name=axis_name,
            param_dtype=param_dtype,
        )

    def init(
        self, rng, s_feats, t_feats, *, teacher_variables=None, teacher=None, **kwargs
    ) -> dict[str, Any]:
        """The connectors' params and BatchNorm statistics, and the margins in "state".

        Raises:
          ValueError: without the teacher module and variables (the margins need them), or
            when the teacher's BatchNorm layers do not match its stages.
        """
        del kwargs
        f_s, f_t = self._pairs(s_feats, t_feats)
        if teacher is None or teacher_variables is None:
            raise ValueError("OFD.init needs teacher= and teacher_variables= (its margins).")
        bns = list(models.bn_before_relu(teacher, teacher_variables))
        n_t = len(fb.stage_keys(t_feats, owner="OFD", role="teacher"))
        if len(bns) != n_t:
            raise ValueError(
                f"OFD: the teacher has {n_t} stages but {len(bns)} BatchNorms before a ReLU."
            )
        bns = bns[len(bns) - len(f_t) :]
        margins = []
        for bn, t in zip(bns, f_t):
            if bn["scale"].shape != (t.shape[-1],):
                raise ValueError(
                    f"OFD: a BatchNorm of {bn['scale'].shape} channels before a teacher stage "
                    f"of {t.shape[-1]} channels."
                )
            gamma, beta = (lax.stop_gradient(common.to_float(bn[k])) for k in ("scale", "bias"))
            margins.append(feature_losses.ofd_margin(gamma, beta).astype(fb.param_dtype(t)))
        variables = fb.init_module(self._module(f_t, param_dtype=fb.param_dtype(f_s[0])), rng, f_s)
        state = {"connectors": variables["state"], "margins": margins}
        return {"params": variables["params"], "state": state}

    def loss(self, x: fb.base.Inputs) -> fb.base.LossOutput:
        params, state = fb.extra_of(x.extra, "OFD")
        f_s, f_t = self._pairs(x.s_feats, x.t_feats)
        f_s, f_t = fb.student_side(f_s), fb.teacher_side(f_t)
        module = self._module(f_t, x.axis_name, fb.param_dtype(f_s[0]))
        outs, connectors = fb.run_train_mode(module, params, state["connectors"], f_s)
        n = len(outs)
        loss = 0.0
        for i, (s, t, margin) in enumerate(zip(outs, f_t, state["margins"])):  # ofd_loss pools t
            loss = loss + feature_losses.ofd_loss(s, t, lax.stop_gradient(margin)) / 2 ** (
                n - i - 1
            )
        kd = self.feat_weight * fb.global_mean(loss, x.axis_name)
        new_state = {"connectors": connectors, "margins": state["margins"]}
        return fb.output(x, kd, ce_weight=self.ce_weight, state=new_state)
