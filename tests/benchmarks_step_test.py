"""benchmarks/step.py: CRD and DML steps (extra params, CRD's memories), the pinned recipes
equal the pair's config, and the module imports without TensorFlow / ml_collections."""

from __future__ import annotations

import importlib
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import step
from luminet_jax import models

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_crd_and_dml_recipes_equal_the_pair_config():
    config_module = importlib.import_module("configs.cifar100_res32x4_res8x4")
    for method in ("crd", "dml"):
        kwargs = dict(config_module.get_config(method).distiller)
        assert kwargs.pop("name") == method
        assert kwargs == step.HPARAMS[method], method


@pytest.mark.slow  # two compiles of the full step: ~40 s alone, minutes on a loaded machine
def test_crd_and_dml_steps_report_extra_params_and_memories():
    argv = "--pair resnet8:resnet8 --methods crd,dml --batch 4 --image-size 8 --num-classes 4"
    rows = {
        r["method"]: r for r in step.main([*argv.split(), "--steps", "1", "--warmup", "0"])["steps"]
    }
    # CRD: two linear embeddings 64 -> 128 (+ bias); memories 2 x 50,000 x 128 and two Z.
    assert rows["crd"]["extra_params"] == 2 * (64 * 128 + 128)
    assert rows["crd"]["state_numbers"] == 2 * step.NUM_TRAIN * 128 + 2
    # DML: the peer (here resnet8 again) is the extra model; no distiller state.
    x = np.zeros((1, 8, 8, 3), np.float32)
    peer = models.get_model("resnet8", num_classes=4).init(jax.random.key(0), x, train=False)
    n_peer = sum(np.size(v) for v in jax.tree.leaves(peer["params"]))
    assert rows["dml"]["extra_params"] == n_peer == rows["dml"]["student_params"]
    assert rows["dml"]["state_numbers"] == 0
    assert all(r["ms_per_step"] > 0 for r in rows.values())


@pytest.mark.integration
def test_importable_without_tensorflow_and_ml_collections():
    code = (
        "import sys\n"
        "for m in ('tensorflow', 'tensorflow_datasets', 'ml_collections'):\n"
        "    sys.modules[m] = None\n"
        "from benchmarks import step\n"
        "assert {'crd', 'dml'} <= set(step.HPARAMS)\n"
    )
    # PYTHONPATH, not only the cwd: with PYTHONSAFEPATH=1 the cwd is not on sys.path.
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env, timeout=120)
