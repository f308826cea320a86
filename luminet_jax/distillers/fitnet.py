"""FitNets (Romero et al., 2015): regress the teacher's hint layer from the student's,
through mdistiller's ConvReg connector (conv + BatchNorm + ReLU)."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from luminet_jax.distillers import feature_base as fb
from luminet_jax.models import layers

# PyTorch's default Conv2d / ConvTranspose2d init: U(+-1/sqrt(fan_in)) for weight and bias.
_TORCH_CONV_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# ConvTranspose2d's weight is (in, out, kH, kW), so torch's fan_in is out * kH * kW.
_TORCH_DECONV_INIT = nn.initializers.variance_scaling(
    1.0 / 3.0, "fan_in", "uniform", in_axis=-1, out_axis=-2
)


def conv_reg_kind(s_hw: tuple[int, int], t_hw: tuple[int, int], *, owner: str = "FitNet") -> str:
    """mdistiller's three ConvReg cases: "stride2" (s = 2t), "deconv" (2s = t), "valid" (s >= t).

    Raises:
      ValueError: when the student's map cannot be mapped to the teacher's size.
    """
    (s_h, s_w), (t_h, t_w) = s_hw, t_hw
    if s_h == 2 * t_h and s_w == 2 * t_w:
        return "stride2"
    if 2 * s_h == t_h and 2 * s_w == t_w:
        return "deconv"
    if s_h >= t_h and s_w >= t_w:
        return "valid"
    raise ValueError(
        f"{owner}: a ConvReg cannot map the student's {s_h}x{s_w} map to the teacher's "
        f"{t_h}x{t_w} (it needs s = 2t, 2s = t or s >= t in both dimensions)."
    )


class ConvReg(nn.Module):
    """mdistiller's ConvReg: conv (3x3 stride 2, 4x4 transposed stride 2, or a valid conv of
    kernel 1 + s - t) from the student's channels to the teacher's, BatchNorm, ReLU."""

    kind: str
    t_channels: int
    kernel: tuple[int, int] = (1, 1)  # "valid" only
    use_relu: bool = True
    axis_name: str | None = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        kw = dict(dtype=x.dtype, param_dtype=self.param_dtype, name="conv")
        fan_in_bias = layers.torch_bias_init
        if self.kind == "stride2":
            conv = nn.Conv(
                self.t_channels,
                (3, 3),
                strides=(2, 2),
                padding=((1, 1), (1, 1)),
                kernel_init=_TORCH_CONV_INIT,
                bias_init=fan_in_bias(9 * x.shape[-1]),
                **kw,
            )
        elif self.kind == "deconv":
            # PyTorch's ConvTranspose2d(k=4, s=2, p=1) pads the dilated input by k - 1 - p.
            conv = nn.ConvTranspose(
                self.t_channels,
                (4, 4),
                strides=(2, 2),
                padding=((2, 2), (2, 2)),
                kernel_init=_TORCH_DECONV_INIT,
                bias_init=fan_in_bias(16 * self.t_channels),
                **kw,
            )
        else:
            fan_in = self.kernel[0] * self.kernel[1] * x.shape[-1]
            conv = nn.Conv(
                self.t_channels,
                self.kernel,
                padding="VALID",
                kernel_init=_TORCH_CONV_INIT,
                bias_init=fan_in_bias(fan_in),
                **kw,
            )
        norm = layers.batch_norm(
            train=train, axis_name=self.axis_name, dtype=x.dtype, param_dtype=self.param_dtype
        )
        x = norm(name="bn")(conv(x))
        return nn.relu(x) if self.use_relu else x


def conv_reg_for(
    s_shape: tuple[int, ...], t_shape: tuple[int, ...], *, axis_name=None, param_dtype=jnp.float32
) -> ConvReg:
    """The ConvReg mapping an NHWC student map of `s_shape` onto one of `t_shape`."""
    kind = conv_reg_kind(tuple(s_shape[1:3]), tuple(t_shape[1:3]))
    kernel = (1 + s_shape[1] - t_shape[1], 1 + s_shape[2] - t_shape[2])
    return ConvReg(
        kind=kind,
        t_channels=int(t_shape[-1]),
        kernel=kernel if kind == "valid" else (1, 1),
        axis_name=axis_name,
        param_dtype=param_dtype,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class FitNet(fb.FeatureDistiller):
    """loss = ce_weight * CE + feat_weight * mse(ConvReg(f_s[hint]), f_t[hint]).

    `hint_layer` indexes mdistiller's feature list ["stem", "stage1", ...]; its default 2 is
    the second stage. The ConvReg trains with the student (extra params) and its BatchNorm
    runs on batch statistics, synchronized over the data axis.
    """

    ce_weight: float = 1.0
    feat_weight: float = 100.0
    hint_layer: int = 2

    def _hint(self, feats, role: str) -> jax.Array:
        keys = fb.hint_keys(feats, owner="FitNet", role=role)
        if not 0 <= self.hint_layer < len(keys):
            raise ValueError(
                f"FitNet: hint_layer={self.hint_layer} is out of range for the {role}'s "
                f"features {keys} (0..{len(keys) - 1})."
            )
        return feats[keys[self.hint_layer]]

    def _conv_reg(self, s_shape, t_shape, axis_name=None, param_dtype=jnp.float32) -> ConvReg:
        return conv_reg_for(s_shape, t_shape, axis_name=axis_name, param_dtype=param_dtype)

    def init(self, rng, s_feats, t_feats, **kwargs) -> dict[str, Any]:
        """The ConvReg's params and BatchNorm statistics, sized from the hint maps' shapes.

        Reference: mdistiller probes the shapes by running both models in train mode on a
        random batch, which moves the teacher's BatchNorm running statistics; here the
        trainer's features come from inference mode and nothing of the teacher changes.
        """
        del kwargs
        f_s, f_t = self._hint(s_feats, "student"), self._hint(t_feats, "teacher")
        module = self._conv_reg(f_s.shape, f_t.shape, param_dtype=fb.param_dtype(f_s))
        out = jax.eval_shape(lambda x: module.init_with_output(rng, x, train=False)[0], f_s)
        if out.shape[1:] != f_t.shape[1:]:
            raise ValueError(
                f"FitNet: the ConvReg maps the student's hint {f_s.shape} to {out.shape}, "
                f"not the teacher's {f_t.shape}."
            )
        return fb.init_module(module, rng, f_s)

    def loss(self, x: fb.base.Inputs) -> fb.base.LossOutput:
        params, state = fb.extra_of(x.extra, "FitNet")
        f_s = fb.student_side(self._hint(x.s_feats, "student"))
        f_t = fb.teacher_side(self._hint(x.t_feats, "teacher"))
        module = self._conv_reg(f_s.shape, f_t.shape, x.axis_name, fb.param_dtype(f_s))
        reg, new_state = fb.run_train_mode(module, params, state, f_s)
        mse = fb.global_mean(jnp.mean(jnp.square(reg - f_t)), x.axis_name)
        kd = self.feat_weight * mse
        return fb.output(x, kd, ce_weight=self.ce_weight, state=new_state)
