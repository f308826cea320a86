"""CRD end to end through `train.train_and_evaluate` (8 fake devices): memories, Z and the
embeddings train, are checkpointed, and a resumed run equals the uninterrupted one. The
trainer hands CRD the training labels through its `data_state` hook."""

from __future__ import annotations

import shutil

import chex
import jax
import numpy as np
import pytest
from train_test import _config  # the quickstart config shrunk to resnet8 / batch 16

from luminet_jax import checkpoint, train

CRD = dict(name="crd", num_negatives=16, feat_dim=16)  # 64 samples, 48 of other classes

# Three runs (teacher, CRD, resumed CRD), each compiling its steps: 6 min on 2 cores shared
# with other jobs (load ~11), about 2 min of CPU time.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import image_data  # noqa: PLC0415

    data = image_data.colour_folder(tmp_path_factory.mktemp("colour"), train=16, test=16)
    teacher_dir = str(tmp_path_factory.mktemp("teacher"))
    train.train_and_evaluate(_config(steps=2, data=data), teacher_dir)

    def crd_config(steps):
        config = _config("kd", steps=steps, teacher_dir=teacher_dir, data=data)
        config.distiller = dict(CRD)
        config.ckpt_every_steps = 3
        config.eval_teacher = False
        return config

    full_dir = tmp_path_factory.mktemp("crd_full")
    full = train.train_and_evaluate(crd_config(6), str(full_dir))
    resumed_dir = tmp_path_factory.mktemp("crd_resumed") / "w"
    shutil.copytree(full_dir, resumed_dir)
    shutil.rmtree(resumed_dir / "ckpt" / "6")
    assert checkpoint.Checkpointer(str(resumed_dir)).latest_step() == 3
    resumed = train.train_and_evaluate(crd_config(6), str(resumed_dir))
    return full, resumed


def test_crd_trains_its_embeddings_and_memories(runs):
    full, _ = runs
    state = full["state"]
    assert int(state.step) == 6
    extra = jax.device_get(state.extra_state)
    assert extra["z_s"] > 0 and extra["z_t"] > 0  # set on the first step
    # 6 steps x 16 = 96 rows updated (every one of the 64 samples at least once): unit norm.
    for name in ("memory_s", "memory_t"):
        np.testing.assert_allclose(np.linalg.norm(extra[name], axis=1), 1.0, rtol=1e-5)
    assert sum(x.size for x in jax.tree.leaves(state.extra_params)) == 2 * (64 * 16 + 16)


def test_resume_equals_uninterrupted_run_memory_included(runs):
    full, resumed = runs
    assert int(resumed["state"].step) == 6
    for field in ("params", "batch_stats", "extra_params", "extra_state", "opt_state"):
        chex.assert_trees_all_close(
            getattr(resumed["state"], field), getattr(full["state"], field), rtol=1e-5, atol=1e-6
        )
    assert float(resumed["state"].extra_state["z_s"]) == float(full["state"].extra_state["z_s"])
