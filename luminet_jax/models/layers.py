"""Shared building blocks for the model zoo: conv/BatchNorm/Dense partials with PyTorch semantics.

Every family builds its layers through these helpers so that padding, BatchNorm
hyperparameters, initialization and the compute dtype agree with the PyTorch references:

- `conv(features, kernel, stride, padding, ...)`: an `nn.Conv` with explicit symmetric
  padding (PyTorch's `padding=p`; Flax's "SAME" pads asymmetrically at stride 2) and
  Kaiming-normal fan-out initialization (mdistiller and torchvision; `kernel_init=` takes
  another, e.g. `TORCH_DEFAULT_CONV_INIT`).
- `batch_norm(train=..., axis_name=...)`: momentum 0.9 (= PyTorch 0.1), eps 1e-5, scale 1,
  bias 0, synchronized over `axis_name` when given.
- `dense(features, ...)`: PyTorch's default `nn.Linear` initialization.
- `compute_dtype(dtype, x)`: the module's compute dtype, defaulting to the inputs' dtype.
- `batch_norm_variables(variables, path)`: one BatchNorm's scale, bias and running
  statistics, for the models' `bn_before_relu` (OFD's margins).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# PyTorch's kaiming_normal_(mode="fan_out", nonlinearity="relu"), untruncated.
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default nn.Linear weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
LINEAR_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# PyTorch's default nn.Conv2d weight init, the same U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the
# mdistiller models that never re-initialize their convs (ShuffleNets, MobileNetV1) keep it.
TORCH_DEFAULT_CONV_INIT = LINEAR_INIT

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def compute_dtype(dtype: Dtype | None, x: jax.Array) -> Dtype:
    """The compute dtype of a model: `dtype` if given, else the inputs' (floating) dtype."""
    if dtype is not None:
        return dtype
    return x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32


def conv(
    features: int,
    kernel: int,
    stride: int = 1,
    padding: int | None = None,
    *,
    dtype: Dtype,
    param_dtype: Dtype = jnp.float32,
    use_bias: bool = False,
    groups: int = 1,
    kernel_init: Callable[..., jax.Array] = CONV_INIT,
    name: str | None = None,
) -> nn.Conv:
    """A square conv with PyTorch padding semantics.

    Args:
      features: output channels.
      kernel: kernel size (square).
      stride: stride (both dims).
      padding: symmetric zero padding; None means `kernel // 2` (PyTorch's usual choice).
      dtype: compute dtype.
      param_dtype: parameter dtype.
      use_bias: whether the conv has a bias (initialized to zero).
      groups: feature groups (depthwise when equal to the input channels).
      kernel_init: the kernel initializer (default Kaiming-normal fan-out, `CONV_INIT`).
      name: the submodule name (PyTorch's attribute name, see torch_convert).

    Returns:
      An `nn.Conv`, to be called on NHWC inputs.
    """
    pad = kernel // 2 if padding is None else padding
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=use_bias,
        feature_group_count=groups,
        kernel_init=kernel_init,
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def opening(
    model: nn.Module, x: jax.Array, *, train: bool, **conv_defaults: Any
) -> tuple[jax.Array, Dtype, Callable[..., nn.Conv], Callable[..., nn.BatchNorm]]:
    """What every CNN's `__call__` starts with, from the model's `dtype`, `param_dtype` and
    `axis_name` fields: (inputs cast to the compute dtype, that dtype, a `conv` partial with
    `conv_defaults`, a `batch_norm` partial)."""
    dtype = compute_dtype(model.dtype, x)
    conv_fn = functools.partial(conv, dtype=dtype, param_dtype=model.param_dtype, **conv_defaults)
    norm = batch_norm(
        train=train, axis_name=model.axis_name, dtype=dtype, param_dtype=model.param_dtype
    )
    return x.astype(dtype), dtype, conv_fn, norm


def batch_norm(
    *,
    train: bool,
    axis_name: str | None,
    dtype: Dtype,
    param_dtype: Dtype = jnp.float32,
) -> Callable[..., nn.BatchNorm]:
    """A BatchNorm partial matching PyTorch's BatchNorm2d(momentum=0.1, eps=1e-5).

    Args:
      train: True uses (and updates) batch statistics; False uses the running averages.
      axis_name: mapped axis to synchronize batch statistics over (None: local batch).
      dtype: compute dtype (statistics are reduced in float32 or wider).
      param_dtype: dtype of scale/bias.

    Returns:
      `functools.partial(nn.BatchNorm, ...)`; call it with `name=...`.
    """
    # Reference: PyTorch puts the unbiased batch variance into running_var, Flax the biased
    # one (a relative n / (n - 1) difference, 1e-4 or less at CIFAR batch sizes).
    return functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        axis_name=axis_name,
        dtype=dtype,
        param_dtype=param_dtype,
    )


def batch_norm_variables(variables: Any, path: Sequence[str]) -> dict[str, jax.Array]:
    """The variables of the BatchNorm submodule at `path` (e.g. ("layer3_2", "bn2")).

    Args:
      variables: a model's {"params": ..., "batch_stats": ...}.
      path: the BatchNorm's submodule names from the model's root.

    Returns:
      {"scale", "bias", "mean", "var"}: (C,) arrays, the affine weight and bias and the
      running statistics (PyTorch's weight, bias, running_mean, running_var).

    Raises:
      KeyError: naming the path when the variables have no such BatchNorm.
    """
    params, stats = variables.get("params", {}), variables.get("batch_stats", {})
    try:
        for name in path:
            params, stats = params[name], stats[name]
        return {
            "scale": params["scale"],
            "bias": params["bias"],
            "mean": stats["mean"],
            "var": stats["var"],
        }
    except (KeyError, TypeError):
        raise KeyError(
            f"The variables have no BatchNorm {'/'.join(path)!r} (params scale/bias and "
            "batch_stats mean/var); were they made for another model?"
        ) from None


def torch_bias_init(fan_in: int) -> Callable[..., jax.Array]:
    """PyTorch's default nn.Linear/nn.Conv bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def dense(
    features: int,
    fan_in: int,
    *,
    dtype: Dtype,
    param_dtype: Dtype = jnp.float32,
    kernel_init: Callable[..., jax.Array] | None = None,
    bias_init: Callable[..., jax.Array] | None = None,
    name: str | None = None,
) -> nn.Dense:
    """An `nn.Dense` with PyTorch's default nn.Linear initialization (overridable).

    Args:
      features: output features.
      fan_in: input features (for the default bias init's bound).
      dtype: compute dtype.
      param_dtype: parameter dtype.
      kernel_init: overrides the PyTorch-default kernel init.
      bias_init: overrides the PyTorch-default bias init.
      name: the submodule name.

    Returns:
      An `nn.Dense`.
    """
    return nn.Dense(
        features,
        kernel_init=LINEAR_INIT if kernel_init is None else kernel_init,
        bias_init=torch_bias_init(fan_in) if bias_init is None else bias_init,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def global_avg_pool(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, C) spatial mean (PyTorch AdaptiveAvgPool2d(1) + flatten)."""
    return jnp.mean(x, axis=(1, 2))


def pooled_classifier(
    x: jax.Array,
    feats: dict[str, jax.Array],
    num_classes: int,
    *,
    dtype: Dtype,
    param_dtype: Dtype = jnp.float32,
    name: str,
    **dense_kwargs: Any,
) -> jax.Array:
    """The CNN head: global average pool (stored as `feats["pooled"]`), then the classifier.

    Call it inside a module's compact `__call__`; the Dense submodule is named `name`.

    Args:
      x: (B, H, W, C) last feature map.
      feats: the model's feature dict; gets the "pooled" entry.
      num_classes: classifier outputs.
      dtype: compute dtype.
      param_dtype: parameter dtype.
      name: the classifier's submodule name (PyTorch's, e.g. "fc" or "linear").
      **dense_kwargs: `kernel_init` / `bias_init` overrides for `dense`.

    Returns:
      (B, num_classes) logits.
    """
    pooled = global_avg_pool(x)
    feats["pooled"] = pooled
    head = dense(
        num_classes,
        pooled.shape[-1],
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
        **dense_kwargs,
    )
    return head(pooled)


def max_pool(x: jax.Array, kernel: int, stride: int, padding: int = 0) -> jax.Array:
    """PyTorch MaxPool2d(kernel, stride, padding): pads with -inf, floors the output size."""
    return nn.max_pool(
        x,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
    )
