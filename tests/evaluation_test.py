"""evaluate(): padded batches count each example once; sharded == one device; top-5 with C<5."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from luminet_jax import evaluation, sharding, steps


class TinyCNN(nn.Module):
    num_classes: int = 7

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.Conv(4, (3, 3), name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn1")(x)
        pooled = jnp.mean(nn.relu(x), axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(pooled), {"pooled": pooled}


def _data(num_classes, n=21, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, 8, 8, 3)).astype(np.float32)
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    model = TinyCNN(num_classes=num_classes)
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(seed), images)
    # Non-trivial running statistics, so eval mode differs from train mode.
    variables = {
        "params": variables["params"],
        "batch_stats": jax.tree.map(lambda a: a + 0.3, variables["batch_stats"]),
    }
    batches = []
    for start in range(0, n, batch):  # the last batch is padded with mask 0
        real = min(batch, n - start)
        pad = batch - real
        batches.append(
            {
                "image": np.concatenate(
                    [images[start : start + real], np.full((pad, 8, 8, 3), 9.0, np.float32)]
                ),
                "label": np.concatenate([labels[start : start + real], np.zeros(pad, np.int32)]),
                "mask": np.concatenate([np.ones(real, np.float32), np.zeros(pad, np.float32)]),
            }
        )
    apply = jax.jit(functools.partial(model.apply, train=False))
    logits = np.asarray(apply(variables, images)[0], np.float64)
    k = min(5, num_classes)
    top_k = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    want = {
        "top1": np.mean(top_k[:, 0] == labels),
        "top5": np.mean(np.any(top_k == labels[:, None], axis=-1)),
        "loss": np.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels)),
        "count": n,
    }
    return model, variables, batches, want


def _check(got, want):
    assert got["count"] == want["count"]
    for key in ("top1", "top5", "loss"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)


@pytest.mark.integration  # heavy: the second tier
def test_evaluate_masked_padding_single_device():
    model, variables, batches, want = _data(num_classes=7)
    got = evaluation.evaluate(jax.jit(steps.make_eval_step(model)), variables, iter(batches))
    _check(got, want)
    assert 0 < want["top1"] < want["top5"] < 1  # a non-trivial check of both


@pytest.mark.integration  # heavy: the second tier
def test_evaluate_sharded_equals_unpadded():
    model, variables, batches, want = _data(num_classes=7)
    mesh = sharding.make_mesh()
    eval_step = sharding.shard_eval_step(steps.make_eval_step(model, axis_name="data"), mesh)
    got = evaluation.evaluate(
        eval_step,
        jax.device_put(variables, sharding.replicated(mesh)),
        (sharding.to_global(b, mesh) for b in batches),
    )
    _check(got, want)


@pytest.mark.integration  # heavy: the second tier
def test_top5_with_fewer_than_five_classes():
    model, variables, batches, want = _data(num_classes=3)
    got = evaluation.evaluate(jax.jit(steps.make_eval_step(model)), variables, batches)
    _check(got, want)
    assert got["top5"] == 1.0


def test_evaluate_without_batches_raises():
    with pytest.raises(ValueError, match="no batches"):
        evaluation.evaluate(lambda v, b: {}, {}, [])
