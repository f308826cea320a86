"""Linear probing of frozen features (Figure 4a: transfer of distilled students).

Pure functions: `extract_features` runs a frozen classifier over uint8 images and returns its
globally pooled features; `train_linear_probe` fits a softmax-regression head on them with
minibatch Adam (features standardized with the train statistics); `probe_accuracy` scores it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


def preprocess(
    images_uint8: np.ndarray, *, size: int, mean: Sequence[float], std: Sequence[float]
) -> jax.Array:
    """uint8 (N, H, W, 3) -> float32 (N, size, size, 3), bilinear (antialiased), normalized."""
    x = jnp.asarray(images_uint8, jnp.float32) / 255.0
    if x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, 3), method="linear", antialias=True)
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


@functools.partial(jax.jit, static_argnames=("model", "size", "mean", "std", "key"))
def _features(model, variables, batch, *, size, mean, std, key):
    x = preprocess(batch, size=size, mean=mean, std=std)
    return model.apply(variables, x, train=False)[1][key]


def extract_features(
    model,
    variables: dict[str, Any],
    images_uint8: np.ndarray,
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 500,
    key: str = "pooled",
) -> np.ndarray:
    """The frozen model's `feats[key]` (inference mode) for every image, as float32 numpy.

    Args:
      model: a zoo module (`apply(variables, x, train=False) -> (logits, feats)`).
      variables: its {"params", "batch_stats"}.
      images_uint8: (N, H, W, 3) images, resized to `size` and normalized with mean/std.
      batch_size: images per forward pass (the last batch is padded, then cut).
    """
    kwargs = dict(size=size, mean=tuple(mean), std=tuple(std), key=key)
    out = []
    for start in range(0, len(images_uint8), batch_size):
        batch = images_uint8[start : start + batch_size]
        pad = batch_size - len(batch)
        if pad:
            batch = np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), batch.dtype)])
        out.append(np.asarray(_features(model, variables, batch, **kwargs))[: batch_size - pad])
    return np.concatenate(out).astype(np.float32)


@functools.partial(
    jax.jit,
    static_argnames=("num_classes", "epochs", "batch_size", "learning_rate", "weight_decay"),
)
def _fit(x_all, labels, seed, *, num_classes, epochs, batch_size, learning_rate, weight_decay):
    n, dim = x_all.shape
    steps = n // batch_size
    tx = optax.adam(learning_rate)
    params = {"w": jnp.zeros((dim, num_classes)), "b": jnp.zeros((num_classes,))}

    def loss_fn(p, x, y):
        logits = x @ p["w"] + p["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce + 0.5 * weight_decay * jnp.sum(p["w"] ** 2)

    def step(carry, idx):
        p, opt = carry
        grads = jax.grad(loss_fn)(p, x_all[idx], labels[idx])
        updates, opt = tx.update(grads, opt, p)
        return (optax.apply_updates(p, updates), opt), None

    def epoch(carry, key):
        order = jax.random.permutation(key, n)[: steps * batch_size].reshape(steps, batch_size)
        return jax.lax.scan(step, carry, order)[0], None

    keys = jax.random.split(jax.random.key(seed), epochs)
    return jax.lax.scan(epoch, (params, tx.init(params)), keys)[0][0]


def train_linear_probe(
    features: jax.Array,
    labels: jax.Array,
    *,
    num_classes: int,
    epochs: int = 30,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> dict[str, jax.Array]:
    """Fits a linear softmax classifier on frozen features with minibatch Adam.

    Features are standardized with the train mean/std (kept in the returned probe). Each
    epoch visits a fresh permutation; the remainder of an epoch is dropped. Weight decay is
    an L2 penalty on the weights (not the bias). Deterministic in `seed`.

    Args:
      features: (N, D) train features.
      labels: (N,) int labels in [0, num_classes).
      num_classes: output classes.

    Returns:
      {"w": (D, C), "b": (C,), "mean": (D,), "std": (D,)}.
    """
    features = jnp.asarray(features, jnp.float32)
    mean = jnp.mean(features, axis=0)
    std = jnp.std(features, axis=0) + 1e-6
    head = _fit(
        (features - mean) / std,
        jnp.asarray(labels, jnp.int32),
        seed,
        num_classes=num_classes,
        epochs=epochs,
        batch_size=min(batch_size, features.shape[0]),
        learning_rate=learning_rate,
        weight_decay=weight_decay,
    )
    return {**head, "mean": mean, "std": std}


def probe_logits(probe: dict[str, jax.Array], features: jax.Array) -> jax.Array:
    """The probe's logits for raw (unstandardized) features."""
    x = (jnp.asarray(features, jnp.float32) - probe["mean"]) / probe["std"]
    return x @ probe["w"] + probe["b"]


def probe_accuracy(
    probe: dict[str, jax.Array], features: jax.Array, labels: jax.Array, *, k: int = 1
) -> float:
    """Top-k accuracy (a fraction) of the probe on `features` (k capped at the classes)."""
    logits = probe_logits(probe, features)
    topk = jax.lax.top_k(logits, min(k, logits.shape[-1]))[1]
    hits = jnp.any(topk == jnp.asarray(labels)[:, None], axis=-1)
    return float(jnp.mean(hits))
