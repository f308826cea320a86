"""LumiNet: per-class batch standardisation of logits ("perception"), then temperature KL."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from luminet_jax.distillers import base, common

DEFAULT_EPS = 1e-5


def _moments(z: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
    """Per-class mean and population variance over axis -2 of z (..., b, C), keepdims."""
    mean = jnp.mean(z, axis=-2, keepdims=True)
    if axis_name is not None:
        mean = lax.pmean(mean, axis_name)
    # E[(z - U)^2] around the (global) mean, so that equal shards give the exact global
    # population variance, not a mean of per-shard variances.
    var = jnp.mean(jnp.square(z - mean), axis=-2, keepdims=True)
    if axis_name is not None:
        var = lax.pmean(var, axis_name)
    return mean, var


def _masked_moments(
    z: jax.Array, mask: jax.Array, axis_name: str | None
) -> tuple[jax.Array, jax.Array]:
    """Per-class mean and population variance over the valid rows of z (b, C), keepdims.

    With `axis_name`, over the valid rows of the global batch (shards may hold different
    numbers of them): sums and counts are `psum`med.
    """
    mean = common.batch_mean(z, axis_name, mask)[None]
    return mean, common.batch_mean(jnp.square(z - mean), axis_name, mask)[None]


def _spanning_group_moments(
    z: jax.Array, axis_name: str, shards_per_group: int
) -> tuple[jax.Array, jax.Array]:
    """Moments over groups of `shards_per_group` consecutive shards (equal shard sizes)."""
    num_classes = z.shape[-1]
    group = lax.axis_index(axis_name) // shards_per_group

    def group_mean(x):  # x: (b, C) -> (1, C), averaged over this shard's group of shards.
        gathered = lax.all_gather(jnp.mean(x, axis=0), axis_name)  # (n, C)
        per_group = jnp.mean(gathered.reshape(-1, shards_per_group, num_classes), axis=1)
        return lax.dynamic_index_in_dim(per_group, group, axis=0, keepdims=True)

    mean = group_mean(z)
    return mean, group_mean(jnp.square(z - mean))


def perception(
    logits: jax.Array,
    *,
    eps: float = DEFAULT_EPS,
    axis_name: str | None = None,
    stats_groups: int = 1,
    mask: jax.Array | None = None,
) -> jax.Array:
    """LumiNet's perceived logits h = (z - U) / sqrt(V + eps), U and V per class over the batch.

    Args:
      logits: (B, C) logits; computed in at least float32.
      eps: added to the variance inside the square root.
      axis_name: data axis when run per shard (shard_map/pmap); U and V are then those of
        the global batch (equal shard sizes assumed).
      stats_groups: G > 1 computes U and V separately in G equal consecutive groups of the
        (global) batch, as the reference's `nn.DataParallel` did per GPU. With `axis_name`,
        each group must lie in one shard or span whole shards.
      mask: (B,) row validity (padded RoIs): U and V are then over the valid rows only (of
        the global batch with `axis_name`); the masked rows' outputs are meaningless.

    Returns:
      (B, C) standardised logits, differentiable through U and V.

    Raises:
      ValueError: logits not rank 2, the batch not divisible into `stats_groups` groups, or
        a mask with `stats_groups` > 1.
    """
    common.check_logits(logits)
    common.check_mask(mask, logits)
    z = common.to_float(logits)
    batch, num_classes = z.shape
    if not isinstance(stats_groups, int) or stats_groups < 1:
        raise ValueError(f"stats_groups must be a positive integer; got {stats_groups!r}.")
    if mask is not None:
        if stats_groups != 1:
            raise ValueError("perception: a mask needs stats_groups=1 (global statistics).")
        mean, var = _masked_moments(z, mask, axis_name)
        return (z - mean) / jnp.sqrt(var + eps)
    if stats_groups == 1:
        mean, var = _moments(z, axis_name)
    elif axis_name is None:
        if batch % stats_groups:
            raise ValueError(f"Batch size {batch} is not divisible by stats_groups={stats_groups}.")
        zg = z.reshape(stats_groups, batch // stats_groups, num_classes)
        mean, var = _moments(zg, None)
        return ((zg - mean) / jnp.sqrt(var + eps)).reshape(batch, num_classes)
    else:
        num_shards = lax.axis_size(axis_name)
        global_batch = batch * num_shards
        if global_batch % stats_groups:
            raise ValueError(
                f"Global batch size {global_batch} ({num_shards} shards of {batch}) is not "
                f"divisible by stats_groups={stats_groups}."
            )
        if stats_groups % num_shards == 0:  # Whole groups inside each shard.
            return perception(z, eps=eps, stats_groups=stats_groups // num_shards)
        if num_shards % stats_groups:
            raise ValueError(
                f"stats_groups={stats_groups} splits shards: with {num_shards} shards it must "
                "be a multiple or a divisor of the shard count."
            )
        mean, var = _spanning_group_moments(z, axis_name, num_shards // stats_groups)
    return (z - mean) / jnp.sqrt(var + eps)


def luminet_kl(
    s_logits: jax.Array,
    t_logits: jax.Array,
    *,
    temperature: float,
    eps: float = DEFAULT_EPS,
    axis_name: str | None = None,
    stats_groups: int = 1,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Unweighted KL_lumi: batchmean KL(teacher || student) of softmax(perception(z) / T).

    Args:
      s_logits: (B, C) student logits.
      t_logits: (B, C) teacher logits (not detached here; the distiller detaches them).
      temperature: T, divides the perceived logits.
      eps: see `perception`.
      axis_name: data axis; statistics and the batch mean are then global.
      stats_groups: see `perception`.
      mask: (B,) row validity (padded RoIs): statistics and the mean over valid rows only.

    Returns:
      A scalar (no T^2 factor, no alpha^2 weight).
    """
    common.check_logits(s_logits, t_logits)
    kw = dict(eps=eps, axis_name=axis_name, stats_groups=stats_groups, mask=mask)
    s_h = perception(s_logits, **kw)
    t_h = perception(t_logits, **kw)
    per_sample = common.kl_per_sample(s_h / temperature, t_h / temperature)
    return common.batch_mean(per_sample, axis_name, mask)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LumiNet(base.Distiller):
    """loss = ce_weight * CE + min(epoch / warmup_epochs, 1) * alpha**2 * KL_lumi."""

    ce_weight: float = 2.0
    alpha: float = 31.0
    temperature: float = 4.0
    warmup_epochs: int = 1
    # Reference: statistics over the global batch by default; nn.DataParallel used per-GPU
    # statistics, which stats_groups=G (G replicas) reproduces.
    stats_groups: int = 1
    eps: float = DEFAULT_EPS

    def __post_init__(self):
        common.check_positive("temperature", self.temperature, owner="luminet")
        common.check_positive("warmup_epochs", self.warmup_epochs, owner="luminet")
        common.check_positive("eps", self.eps, owner="luminet")
        if not isinstance(self.stats_groups, int) or self.stats_groups < 1:
            raise ValueError(
                f"luminet: stats_groups must be an int >= 1; got {self.stats_groups!r}"
            )

    def loss(self, x: base.Inputs) -> base.LossOutput:
        s_logits, t_logits = common.distiller_inputs(x.s_logits, x.t_logits, x.labels)
        axis_name, mask = x.axis_name, x.mask
        ce = common.softmax_xent(s_logits, x.labels, axis_name=axis_name, mask=mask)
        # alpha is squared, as in LumiNet's released code (alpha=33 -> weight 1089).
        kd = self.alpha**2 * luminet_kl(
            s_logits,
            t_logits,
            temperature=self.temperature,
            eps=self.eps,
            axis_name=axis_name,
            stats_groups=self.stats_groups,
            mask=mask,
        )
        kd = common.warmup_ramp(x.epoch, self.warmup_epochs, kd.dtype) * kd
        return base.LossOutput(
            total=self.ce_weight * ce + kd, parts={"loss_ce": self.ce_weight * ce, "loss_kd": kd}
        )
