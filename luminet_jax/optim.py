"""SGD with PyTorch's coupled weight decay, and the step-decay (+ warmup) learning-rate schedule."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax


def make_optimizer(
    *,
    learning_rate: float | optax.Schedule,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    clip_grad_norm: float = 0.0,
) -> optax.GradientTransformation:
    """SGD with momentum and coupled weight decay, as `torch.optim.SGD`.

    PyTorch adds `weight_decay * param` to the gradient before the momentum buffer
    (`b = momentum * b + (g + wd * p)`, first step `b = g + wd * p`; `p -= lr * b`).
    `add_decayed_weights` followed by `sgd` does exactly that.

    Args:
      learning_rate: a float or an optax schedule (a function of the update count).
      momentum: momentum coefficient (0 disables the buffer).
      weight_decay: coupled L2 coefficient.
      nesterov: Nesterov momentum (PyTorch's `nesterov=True`).
      clip_grad_norm: > 0: first scale the gradients to at most this global L2 norm
        (detectron2's SOLVER.CLIP_GRADIENTS "full_model" / `clip_grad_norm_`); 0: off.

    Returns:
      An optax gradient transformation.
    """
    # Reference: PyTorch SGD decays every parameter (BatchNorm scales and biases too); no mask.
    sgd = optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov),
    )
    if clip_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(clip_grad_norm), sgd)
    return sgd


def make_schedule(
    *,
    base_lr: float,
    steps_per_epoch: int,
    decay_epochs: Sequence[int] = (),
    decay_rate: float = 0.1,
    decay_steps: Sequence[int] = (),
    warmup_steps: int = 0,
    warmup_factor: float = 0.001,
) -> Callable[[jax.Array | int], jax.Array]:
    """Piecewise-constant step decay, at epoch boundaries or at given steps, with linear warmup.

    Epochs (mdistiller's `adjust_learning_rate`): the rate is multiplied by `decay_rate` at
    the start of each 1-based epoch listed in `decay_epochs`: epoch `e` starts at step
    `(e - 1) * steps_per_epoch`. For example `decay_epochs=(151, 181, 211)` gives `base_lr`
    for epochs 1-150, `base_lr * 0.1` for 151-180, and so on.

    Steps (detectron2's WarmupMultiStepLR, "linear"): the rate is multiplied by `decay_rate`
    from each step listed in `decay_steps` on (0-based update counts: `decay_steps=(120000,)`
    decays from the 120001st update), and during the first `warmup_steps` updates by
    `warmup_factor * (1 - step / warmup_steps) + step / warmup_steps`.

    Args:
      base_lr: the initial learning rate (after warmup).
      steps_per_epoch: optimizer steps per epoch (> 0).
      decay_epochs: 1-based epochs at whose start the rate decays (repeats decay twice).
      decay_rate: the factor applied at each listed epoch or step.
      decay_steps: update counts from which the rate decays (not with `decay_epochs`).
      warmup_steps: length of the linear warmup (0: none).
      warmup_factor: the warmup's starting factor (detectron2's WARMUP_FACTOR, 0.001).

    Returns:
      A function `step -> lr` usable inside jit and as an optax schedule.
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    if any(int(e) < 1 for e in decay_epochs):
        raise ValueError(f"decay_epochs are 1-based epochs, got {tuple(decay_epochs)}")
    if decay_epochs and decay_steps:
        raise ValueError("Give decay_epochs or decay_steps, not both.")
    if any(int(s) < 0 for s in decay_steps) or warmup_steps < 0:
        raise ValueError(
            f"decay_steps and warmup_steps must be >= 0, got {tuple(decay_steps)}, {warmup_steps}"
        )
    boundaries = tuple(sorted((int(e) - 1) * steps_per_epoch for e in decay_epochs))
    boundaries += tuple(sorted(int(s) for s in decay_steps))

    def schedule(step: jax.Array | int) -> jax.Array:
        step = jnp.asarray(step)
        num_decays = sum((step >= b).astype(jnp.int32) for b in boundaries)
        # Python scalars keep the result weakly typed: float32 or float64 as the params are.
        lr = jnp.asarray(base_lr * decay_rate**num_decays)
        if warmup_steps:
            alpha = jnp.minimum(step / warmup_steps, 1.0)
            lr = lr * (warmup_factor * (1.0 - alpha) + alpha)
        return lr

    return schedule
