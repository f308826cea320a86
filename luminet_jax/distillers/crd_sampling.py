"""CRD's contrastive index, drawn on device: mdistiller's `CIFAR100InstanceSample` sampling.

Each row holds the positive (column 0) and K negatives from the other classes, drawn
without replacement unless K exceeds their number, as the reference's
`np.random.choice(cls_negative[target], K, replace=K > len(cls_negative[target]))`. Every
row's randomness comes from the step key folded with the row's global position, so the
index is the same on any number of devices and on resume.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("exact", "relax")
_DIGITS = ((21, 11), (10, 11), (0, 10))  # (shift, width): a uint32 key in three digits


def _hash_stream(seeds: jax.Array, length: int) -> jax.Array:
    """`length` pseudo-random uint32 values from two uint32 seeds, all distinct.

    murmur3's 32-bit finalizer applied twice to a Weyl sequence: each step is a bijection
    of uint32, so the values are distinct and no two keys tie. About 100x cheaper than
    threefry on CPU (4 ms against 0.5 s for B x (N + K) values at CIFAR-100's sizes).
    """

    def fmix(h):
        h = h ^ (h >> 16)
        h = h * jnp.uint32(0x85EBCA6B)
        h = h ^ (h >> 13)
        h = h * jnp.uint32(0xC2B2AE35)
        return h ^ (h >> 16)

    weyl = jnp.arange(length, dtype=jnp.uint32) * jnp.uint32(0x9E3779B9) + seeds[0]
    return fmix(fmix(weyl) ^ seeds[1])


def _k_smallest(keys: jax.Array, valid: jax.Array, k: int) -> jax.Array:
    """Positions (k,) of the k smallest of the distinct uint32 `keys` where `valid`, ascending.

    An exact radix select: per 11/11/10-bit digit, a histogram of the valid keys that share
    the digits found so far gives the next digit of the k-th smallest key; then the valid
    keys up to it are compacted in position order. On 2 busy CPU cores at B = 64,
    N = 50,000, k = 16,384 it took half the time of `lax.top_k`. Garbage when fewer than k
    keys are valid (the caller discards that case).
    """
    n = keys.shape[0]
    in_prefix, threshold, rank = valid, jnp.uint32(0), k
    for shift, width in _DIGITS:
        digit = ((keys >> shift) & ((1 << width) - 1)).astype(jnp.int32)
        counts = jnp.zeros(1 << width, jnp.int32).at[digit].add(in_prefix.astype(jnp.int32))
        counts = jnp.cumsum(counts)
        d = jnp.minimum(jnp.sum(counts < rank), (1 << width) - 1)
        rank = rank - jnp.where(d > 0, counts[jnp.maximum(d - 1, 0)], 0)
        in_prefix = in_prefix & (digit == d)
        threshold = threshold | (d.astype(jnp.uint32) << shift)
    chosen = valid & (keys <= threshold)
    dest = jnp.where(chosen, jnp.cumsum(chosen) - 1, k)  # k: dropped
    return jnp.zeros(k, jnp.int32).at[dest].set(jnp.arange(n, dtype=jnp.int32), mode="drop")


def sample_label_state(labels: Any) -> dict[str, jax.Array]:
    """The training labels as the sampler needs them: sample indices sorted by class.

    Args:
      labels: (num_train,) integer class of every training sample, indexed like the
        batches' "index".

    Returns:
      {"order": (N,) int32 sample indices, stably sorted by class, "sorted_labels": (N,)
      int32 their classes}; a class's samples are one contiguous block of `order`.
    """
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    order = np.argsort(labels, kind="stable")
    return {
        "order": jnp.asarray(order, jnp.int32),
        "sorted_labels": jnp.asarray(labels[order], jnp.int32),
    }


def _contrast_row(key, index, label, order, sorted_labels, *, num_negatives, mode, replace):
    """One row of the contrastive index, (K+1,): the positive, then K other-class negatives.

    A row's randomness is one hash stream seeded from its key (`_hash_stream`). Integers
    in [0, n) are `bits % n`, whose modulo bias is below n / 2^32 relative.
    """
    n, k = order.shape[0], num_negatives
    start = jnp.searchsorted(sorted_labels, label, side="left", method="compare_all")
    count = jnp.searchsorted(sorted_labels, label, side="right", method="compare_all") - start
    pool = n - count  # the samples of the other classes
    distinct = not replace and k <= n
    bits = _hash_stream(jax.random.bits(key, (2,), jnp.uint32), k + 1 + (n if distinct else 0))
    # With replacement: uniform positions of `order` that skip the class's block.
    u = (bits[1 : k + 1] % jnp.maximum(pool, 1).astype(jnp.uint32)).astype(jnp.int32)
    negatives = order[u + jnp.where(u >= start, count, 0)]
    if distinct:
        # Without replacement (np.random.choice(replace=False)): the positions of the K
        # smallest of distinct pseudo-random keys over the pool are a random K-subset.
        pos = jnp.arange(n)
        valid = (pos < start) | (pos >= start + count)
        without = order[_k_smallest(bits[k + 1 :], valid, k)]
        # The reference draws with replacement only where K exceeds the pool.
        negatives = jnp.where(k <= pool, without, negatives)
    if mode == "exact":
        positive = index
    else:  # "relax": a random sample of the same class (mdistiller's cls_positive).
        pick = (bits[0] % jnp.maximum(count, 1).astype(jnp.uint32)).astype(jnp.int32)
        positive = order[start + pick]
    return jnp.concatenate([jnp.reshape(positive, (1,)), negatives]).astype(jnp.int32)


def crd_contrast_index(
    rng: jax.Array,
    index: jax.Array,
    labels: jax.Array,
    order: jax.Array,
    sorted_labels: jax.Array,
    *,
    num_negatives: int,
    mode: str = "exact",
    replace: bool = False,
    row_offset: jax.Array | int = 0,
) -> jax.Array:
    """mdistiller's `CIFAR100InstanceSample` contrastive index, drawn on device.

    Args:
      rng: the step's key (identical on every shard).
      index: (B,) the batch's sample indices.
      labels: (B,) their classes.
      order: (N,) from `sample_label_state`.
      sorted_labels: (N,) from `sample_label_state`.
      num_negatives: K.
      mode: "exact" (column 0 is the sample itself) or "relax" (column 0 is a uniformly
        drawn sample of its class); in both modes the K negatives are drawn from the
        samples of the other classes, without replacement unless K exceeds their number.
      replace: draw the negatives with replacement always, as mdistiller's ImageNet
        sampler does: O(B x K) instead of a radix select over (B, N) keys; each negative
        is still uniform over the other classes.
      row_offset: the global position of row 0 (shard index x local batch), so that each
        global row gets the same key on any number of devices.

    Returns:
      (B, K+1) int32.
    """
    if mode not in MODES:
        raise ValueError(f"CRD mode must be one of {MODES}; got {mode!r}.")
    rows = row_offset + jnp.arange(index.shape[0])
    keys = jax.vmap(lambda r: jax.random.fold_in(rng, r))(rows)
    row_fn = lambda key, i, y: _contrast_row(  # noqa: E731
        key, i, y, order, sorted_labels, num_negatives=num_negatives, mode=mode, replace=replace
    )
    return jax.vmap(row_fn)(keys, index.astype(jnp.int32), labels.astype(jnp.int32))
