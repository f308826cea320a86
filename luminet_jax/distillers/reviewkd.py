"""ReviewKD (Chen et al., 2021), as mdistiller's ReviewKD: attention-based fusion (ABF) of the
student's stages from the deepest (the pooled features) upwards, compared with the teacher's
pre-ReLU stages and pooled features by the hierarchical context loss (HCL)."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from luminet_jax.distillers import common, feature_losses
from luminet_jax.distillers import feature_base as fb
from luminet_jax.models import layers

# nn.init.kaiming_uniform_(w, a=1): gain 1, bound sqrt(3 / fan_in).
_KAIMING_UNIFORM_A1 = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
# PyTorch's default Conv2d weight init: U(+-1/sqrt(fan_in)).
_TORCH_CONV_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class ABF(nn.Module):
    """conv1x1 + BN to `mid`; with `fuse`, a sigmoid attention mixes it with the residual
    (nearest-upsampled to `shape`); nearest resize to `out_shape`; conv3x3 + BN to `out`."""

    mid_channels: int
    out_channels: int
    fuse: bool
    axis_name: str | None = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, residual=None, shape=None, out_shape=None, *, train: bool):
        kw = dict(dtype=x.dtype, param_dtype=self.param_dtype)
        norm = layers.batch_norm(train=train, axis_name=self.axis_name, **kw)
        x = nn.Conv(
            self.mid_channels,
            (1, 1),
            use_bias=False,
            kernel_init=_KAIMING_UNIFORM_A1,
            name="conv1",
            **kw,
        )(x)
        x = norm(name="bn1")(x)
        if self.fuse:
            residual = fb.nearest_resize(residual, shape)
            z = jnp.concatenate([x, residual], axis=-1)
            z = nn.Conv(
                2,
                (1, 1),
                kernel_init=_TORCH_CONV_INIT,
                bias_init=layers.torch_bias_init(2 * self.mid_channels),
                name="att_conv",
                **kw,
            )(z)
            z = nn.sigmoid(z)
            x = x * z[..., 0:1] + residual * z[..., 1:2]
        x = fb.nearest_resize(x, out_shape)
        y = nn.Conv(
            self.out_channels,
            (3, 3),
            padding=((1, 1), (1, 1)),
            use_bias=False,
            kernel_init=_KAIMING_UNIFORM_A1,
            name="conv2",
            **kw,
        )(x)
        return norm(name="bn2")(y), x


class ReviewFusion(nn.Module):
    """The ABF chain. `xs` = student maps deepest first (the pooled map first); returns the
    fused maps shallowest first (the order of the teacher's list)."""

    in_channels: tuple[int, ...]  # shallowest first, as mdistiller's IN_CHANNELS
    out_channels: tuple[int, ...]
    shapes: tuple[int, ...]  # deepest first, as mdistiller's SHAPES
    out_shapes: tuple[int, ...]
    mid_channels: int
    axis_name: str | None = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, xs: list[jax.Array], *, train: bool) -> list[jax.Array]:
        n = len(self.in_channels)
        abfs = [  # abfs[j] handles xs[j]; mdistiller builds them shallowest first, reversed.
            ABF(
                self.mid_channels,
                self.out_channels[n - 1 - j],
                fuse=j > 0,
                axis_name=self.axis_name,
                param_dtype=self.param_dtype,
                name=f"abf{n - 1 - j}",
            )
            for j in range(n)
        ]
        out, residual = abfs[0](xs[0], out_shape=self.out_shapes[0], train=train)
        results = [out]
        for j in range(1, n):
            out, residual = abfs[j](
                xs[j], residual, self.shapes[j], self.out_shapes[j], train=train
            )
            results.insert(0, out)
        return results


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReviewKD(fb.FeatureDistiller):
    """loss = ce_weight * CE + min(epoch / warmup_epochs, 1) * reviewkd_weight * HCL.

    With n = len(in_channels) ABFs, the student gives its pooled features and its last n - 1
    maps of ["stem", "stage1", ...] ("stage{i}_preact" with `stu_preact`); the teacher gives
    its last n - 1 "stage{i}_preact" maps and its pooled features. The lists are per pair,
    as in mdistiller's configs (shallowest first for the channels, deepest first for the
    shapes); `init` checks them against the features.
    """

    ce_weight: float = 1.0
    reviewkd_weight: float = 1.0
    warmup_epochs: int = 20
    shapes: tuple[int, ...] = (1, 8, 16, 32)
    out_shapes: tuple[int, ...] | None = (1, 8, 16, 32)  # None: equal to `shapes`
    in_channels: tuple[int, ...] = (64, 128, 256, 256)
    out_channels: tuple[int, ...] = (64, 128, 256, 256)
    # Reference: mdistiller reads MAX_MID_CHANNEL but builds min(512, in_channels[-1]).
    max_mid_channel: int = 512
    stu_preact: bool = False

    def __post_init__(self):
        n = len(self.in_channels)
        lists = dict(out_channels=self.out_channels, shapes=self.shapes)
        if self.out_shapes is not None:
            lists["out_shapes"] = self.out_shapes
        bad = {k: len(v) for k, v in lists.items() if len(v) != n}
        if n < 1 or bad:
            raise ValueError(
                f"ReviewKD: in_channels has {n} entries; the other lists must match: {bad}."
            )
        common.check_positive("warmup_epochs", self.warmup_epochs, owner="ReviewKD")

    def _inputs(self, s_feats, t_feats) -> tuple[list, list]:
        n = len(self.in_channels)
        keys = fb.hint_keys(s_feats, owner="ReviewKD", role="student")
        if self.stu_preact:
            keys = ["stem", *fb.stage_keys(s_feats, preact=True, owner="ReviewKD", role="student")]
        pooled = fb.feature(s_feats, "pooled", owner="ReviewKD", role="student")
        xs = [fb.as_map(pooled)] + [s_feats[k] for k in keys[::-1]]
        t_pooled = fb.feature(t_feats, "pooled", owner="ReviewKD", role="teacher")
        t_maps = fb.stage_list(t_feats, preact=True, owner="ReviewKD", role="teacher")
        t_list = [*t_maps, fb.as_map(t_pooled)]
        if len(xs) < n or len(t_list) < n:
            raise ValueError(
                f"ReviewKD: {n} ABFs need {n} student and teacher features; the student has "
                f"{len(xs)} (pooled + {keys}), the teacher {len(t_list)}."
            )
        return xs[:n], t_list[-n:]

    def _module(self, axis_name=None, param_dtype=jnp.float32) -> ReviewFusion:
        return ReviewFusion(
            in_channels=tuple(self.in_channels),
            out_channels=tuple(self.out_channels),
            shapes=tuple(self.shapes),
            out_shapes=tuple(self.shapes if self.out_shapes is None else self.out_shapes),
            mid_channels=min(self.max_mid_channel, self.in_channels[-1]),
            axis_name=axis_name,
            param_dtype=param_dtype,
        )

    def init(self, rng, s_feats, t_feats, **kwargs) -> dict[str, Any]:
        """The ABFs' params and BatchNorm statistics, after checking the per-pair lists.

        Raises:
          ValueError: channels or shapes of the lists that differ from the features.
        """
        del kwargs
        xs, t_list = self._inputs(s_feats, t_feats)
        n = len(self.in_channels)
        shapes = self.shapes
        for j, x in enumerate(xs):
            want_c, want_hw = self.in_channels[n - 1 - j], shapes[j]
            if x.shape[-1] != want_c or (j > 0 and x.shape[1:3] != (want_hw, want_hw)):
                raise ValueError(
                    f"ReviewKD: student feature {j} (deepest first) is {x.shape[1:]} but "
                    f"in_channels/shapes give {want_c} channels at {want_hw}x{want_hw}."
                )
        module = self._module(param_dtype=fb.param_dtype(xs[-1]))
        outs = jax.eval_shape(lambda xs: module.init_with_output(rng, xs, train=False)[0], xs)
        for i, (o, t) in enumerate(zip(outs, t_list)):
            if o.shape[1:] != t.shape[1:]:
                raise ValueError(
                    f"ReviewKD: fused map {i} (shallowest first) is {o.shape[1:]} but the "
                    f"teacher's is {t.shape[1:]}; fix out_channels/out_shapes."
                )
        return fb.init_module(module, rng, xs)

    def loss(self, x: fb.base.Inputs) -> fb.base.LossOutput:
        params, state = fb.extra_of(x.extra, "ReviewKD")
        xs, t_list = self._inputs(x.s_feats, x.t_feats)
        xs, t_list = fb.student_side(xs), fb.teacher_side(t_list)
        module = self._module(x.axis_name, fb.param_dtype(xs[-1]))
        results, new_state = fb.run_train_mode(module, params, state, xs)
        hcl = fb.global_mean(feature_losses.hcl_loss(results, t_list), x.axis_name)
        ramp = common.warmup_ramp(x.epoch, self.warmup_epochs, hcl.dtype)
        kd = ramp * self.reviewkd_weight * hcl
        return fb.output(x, kd, ce_weight=self.ce_weight, state=new_state)
