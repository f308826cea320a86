"""Opt-in 2-D convolution whose weight gradient is a matrix product (for XLA on CPU).

`conv2d` keeps XLA's forward convolution and XLA's input gradient (the transposed
convolution) and computes the weight gradient as one matmul per kernel tap,
`window^T @ grad_out`, with the input transposed once to channels-major so that the
contracted axis is the minor one. Values and gradients equal XLA's up to float summation
order.

Measured on a 2-core CPU with jaxlib 0.10 (benchmarks/README.md): XLA's weight gradient
of a 1x1 convolution (projection shortcuts, bottlenecks, ShuffleNet's grouped 1x1) is 4-15x
slower than this matmul, while for 3x3 convolutions XLA's own (YNNPACK) weight gradient
is faster than any im2col variant tried. The default scope "pointwise" therefore routes
only 1x1 convolutions; "all" routes every supported convolution.

Models are not modified: `matmul_weight_grad()` is a context manager that intercepts
`flax.linen.Conv.__call__` while a function is traced and routes supported convolutions
(2-D, NHWC, no dilation, no mask) through `conv2d`, creating the same parameters;
everything else falls through to Flax unchanged. `wrap(fn)` runs `fn` inside that
context, so

    train_step = sharding.shard_train_step(fast_conv.wrap(train_step), mesh)

gives the faster step. It is off by default and meant for CPU only: GPU and TPU backends
have fast weight-gradient kernels.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import linear
from jax import lax

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")

Padding = tuple[tuple[int, int], tuple[int, int]]


def _forward(x, w, strides, padding, groups, precision):
    return lax.conv_general_dilated(
        x,
        w,
        window_strides=strides,
        padding=padding,
        dimension_numbers=_DIMENSION_NUMBERS,
        feature_group_count=groups,
        precision=precision,
    )


def _tap_slices(x: jax.Array, kernel, strides, padding, out_hw) -> list[jax.Array]:
    """The (C, N*Ho*Wo) input window of each kernel tap, in HW order.

    The input is transposed to channels-major once, so each tap is a plain matrix whose
    contracted (position) axis is the minor one: the layout matrix units handle best.
    """
    (pt, pb), (pl, pr) = padding
    xt = jnp.transpose(x, (3, 0, 1, 2))  # (C, N, H, W)
    # lax.pad also accepts negative (cropping) padding, as lax.conv_general_dilated does.
    xt = lax.pad(xt, jnp.zeros((), x.dtype), ((0, 0, 0), (0, 0, 0), (pt, pb, 0), (pl, pr, 0)))
    c, n = xt.shape[:2]
    (ho, wo), (sh, sw) = out_hw, strides
    return [
        lax.slice(
            xt,
            (0, 0, i, j),
            (c, n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1),
            (1, 1, sh, sw),
        ).reshape(c, n * ho * wo)
        for i in range(kernel[0])
        for j in range(kernel[1])
    ]


def _weight_grad(x, g, w_shape, strides, padding, groups, precision):
    """dL/dw = sum over positions of window x grad_out, one matmul per tap; HWIO result."""
    kh, kw, cg, cout = w_shape
    n, ho, wo, _ = g.shape
    m, og = n * ho * wo, cout // groups
    # Low-precision inputs accumulate in float32, like XLA's own convolutions.
    acc = jnp.promote_types(x.dtype, jnp.float32)
    dot = functools.partial(jnp.matmul, precision=precision, preferred_element_type=acc)
    taps = _tap_slices(x, (kh, kw), strides, padding, (ho, wo))
    if groups == 1:
        g2 = g.reshape(m, cout)
        dw = jnp.stack([dot(t, g2) for t in taps])  # (K, C, O)
    elif cg == 1 and og == 1:  # depthwise: per-channel dot products
        gt = jnp.transpose(g.reshape(m, cout)).astype(acc)  # (C, M)
        dw = jnp.stack([jnp.sum(t.astype(acc) * gt, axis=-1)[None] for t in taps])  # (K, 1, C)
    else:
        gt = jnp.transpose(g.reshape(m, groups, og), (1, 2, 0))  # (G, Og, M)
        per_group = [dot(t.reshape(groups, cg, m), jnp.swapaxes(gt, 1, 2)) for t in taps]
        dw = jnp.stack([jnp.swapaxes(d, 0, 1).reshape(cg, cout) for d in per_group])
    return dw.reshape(kh, kw, cg, cout)


def _varying_axes(x: jax.Array) -> frozenset:
    """The shard_map axes `x` varies over (empty outside shard_map)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "mat", None)  # jax >= 0.10: manual axis types
    return frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))


def conv2d(
    x: jax.Array,
    w: jax.Array,
    strides: tuple[int, int],
    padding: Padding,
    groups: int = 1,
    precision: Any = None,
) -> jax.Array:
    """`lax.conv_general_dilated` (NHWC/HWIO) with a matmul weight gradient.

    Args:
      x: (N, H, W, C) input.
      w: (kh, kw, C // groups, O) kernel.
      strides: (sh, sw) window strides.
      padding: explicit ((top, bottom), (left, right)) zero padding (hashable tuples).
      groups: feature_group_count (C for depthwise).
      precision: as for `lax.conv_general_dilated`.

    Returns:
      (N, Ho, Wo, O), equal to `lax.conv_general_dilated(x, w, ...)`.
    """
    # Under shard_map, a replicated kernel meets a per-shard input. lax's convolution casts
    # the kernel to "varying" implicitly, and autodiff turns that cast into the psum of the
    # kernel's cotangent. A custom_vjp must see operands of one type, so cast explicitly.
    x_axes, w_axes = _varying_axes(x), _varying_axes(w)
    x = lax.pcast(x, tuple(sorted(w_axes - x_axes)), to="varying")
    w = lax.pcast(w, tuple(sorted(x_axes - w_axes)), to="varying")
    return _conv2d(x, w, tuple(strides), tuple(map(tuple, padding)), groups, precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv2d(x, w, strides, padding, groups, precision):
    return _forward(x, w, strides, padding, groups, precision)


def _conv2d_fwd(x, w, strides, padding, groups, precision):
    return _forward(x, w, strides, padding, groups, precision), (x, w)


def _conv2d_bwd(strides, padding, groups, precision, residuals, g):
    x, w = residuals
    # Input gradient: XLA's transposed convolution (the forward is dead code after DCE).
    _, input_vjp = jax.vjp(lambda x_: _forward(x_, w, strides, padding, groups, precision), x)
    (dx,) = input_vjp(g)
    dw = _weight_grad(x, g, w.shape, strides, padding, groups, precision)
    return dx, dw.astype(w.dtype)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


SCOPES = ("pointwise", "all")


def _as_pairs(value: int | Sequence[int] | None) -> tuple[int, ...]:
    """Flax's broadcasting of strides/dilations to the two spatial dims."""
    if value is None:
        return (1, 1)
    if isinstance(value, int):
        return (value, value)
    return tuple(int(v) for v in value)


def _explicit_padding(padding: Any, in_hw, kernel, strides) -> Padding | None:
    """Flax's padding spec as explicit pairs, or None for modes this module leaves to Flax."""
    pads = linear.canonicalize_padding(padding, 2)
    if isinstance(pads, str):
        if pads not in ("SAME", "VALID", "SAME_LOWER"):
            return None  # CIRCULAR, REFLECT, CAUSAL: Flax pads the input itself.
        pads = lax.padtype_to_pads(in_hw, kernel, strides, pads)
    return tuple((int(lo), int(hi)) for lo, hi in pads)  # type: ignore[return-value]


def _kernel_size(module: nn.Conv) -> tuple[int, ...]:
    k = module.kernel_size
    return (k,) if isinstance(k, int) else tuple(k)  # Flax: an int is a 1-D kernel.


def _supported(module: nn.Conv, inputs: Any, scope: str) -> bool:
    """Whether this call is a plain 2-D conv that `conv2d` reproduces (and `scope` selects)."""
    kernel_size = _kernel_size(module)
    groups = module.feature_group_count
    return (
        type(module).__call__ is nn.Conv.__call__
        and hasattr(inputs, "ndim")
        and inputs.ndim == 4
        and len(kernel_size) == 2
        and (scope == "all" or kernel_size == (1, 1))
        and groups >= 1
        and inputs.shape[-1] % groups == 0
        and module.features % groups == 0
        and module.mask is None
        and module.conv_general_dilated is None
        and module.conv_general_dilated_cls is None
        and _as_pairs(module.input_dilation) == (1, 1)
        and _as_pairs(module.kernel_dilation) == (1, 1)
    )


def _fast_conv_call(module: nn.Conv, inputs: jax.Array) -> jax.Array | None:
    """`nn.Conv.__call__` through `conv2d` (runs inside the module's compact scope).

    Creates the same parameters (names, shapes, initializers, dtypes) as Flax and applies
    the same dtype promotion and bias, so variables and outputs are interchangeable.
    """
    kernel_size = _kernel_size(module)
    strides = _as_pairs(module.strides)
    padding = _explicit_padding(module.padding, inputs.shape[1:3], kernel_size, strides)
    if padding is None:
        return None
    groups = module.feature_group_count
    kernel_shape = kernel_size + (inputs.shape[-1] // groups, module.features)
    kernel = module.param("kernel", module.kernel_init, kernel_shape, module.param_dtype)
    bias = None
    if module.use_bias:
        bias = module.param("bias", module.bias_init, (module.features,), module.param_dtype)
    inputs, kernel, bias = module.promote_dtype(inputs, kernel, bias, dtype=module.dtype)
    y = conv2d(inputs, kernel, strides, padding, groups, module.precision)
    if bias is not None:
        y += bias.reshape((1, 1, 1, -1))
    return y


def _make_interceptor(scope: str) -> Callable:
    def interceptor(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
        module = context.module
        if (
            isinstance(module, nn.Conv)
            and context.method_name == "__call__"
            and len(args) == 1
            and not kwargs
            and _supported(module, args[0], scope)
        ):
            y = _fast_conv_call(module, args[0])
            if y is not None:
                return y
        return next_fun(*args, **kwargs)

    return interceptor


@contextlib.contextmanager
def matmul_weight_grad(scope: str = "pointwise") -> Iterator[None]:
    """Within this context, traced `nn.Conv` calls use `conv2d` (same values and gradients).

    Interception happens at trace time: enter the context around the code that traces the
    model (e.g. the first call of a jitted step), or use `wrap`.

    Args:
      scope: "pointwise" routes only 1x1 convolutions (where XLA's CPU weight gradient is
        4-6x slower than a matmul; see benchmarks/README.md); "all" routes every
        supported 2-D convolution (3x3 included, slower on CPU with jaxlib's YNNPACK
        convolutions, kept for experiments and tests).
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    with nn.intercept_methods(_make_interceptor(scope)):
        yield


def wrap(fn: Callable, enabled: bool = True, scope: str = "pointwise") -> Callable:
    """`fn` run inside `matmul_weight_grad(scope)` (unchanged when `enabled` is False).

    Wrap the train step before `jax.jit`/`shard_map`, so that tracing happens inside the
    context; the jitted result needs no context afterwards.

    Args:
      fn: any function that applies Flax modules (e.g. a train step).
      enabled: the opt-in flag (e.g. `config.fast_conv`, default off; leave it off on
        GPU/TPU); False returns `fn` itself.
      scope: which convolutions to route, see `matmul_weight_grad`.

    Returns:
      The wrapped function.
    """
    if not enabled:
        return fn
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with matmul_weight_grad(scope):
            return fn(*args, **kwargs)

    return wrapped
