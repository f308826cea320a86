"""benchmarks/step.py: the JSON's fields (latency and throughput), CRD and DML steps (extra
params, CRD's memories), the pinned recipes equal the pair's config, ReviewKD's lists read off
the models, and the module imports without TensorFlow / ml_collections."""

from __future__ import annotations

import importlib
import json
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


@pytest.mark.integration  # heavy: the second tier
def test_json_keeps_its_fields_and_adds_throughput(tmp_path):
    out = tmp_path / "step.json"
    argv = "--pair resnet8:resnet8 --methods kd --batch 4 --image-size 8 --num-classes 4"
    argv += " --steps 2 --warmup 0 --throughput-steps 3 --throughput-rounds 2 --cache-dir off"
    step.main([*argv.split(), "--out", str(out)])
    result = json.loads(out.read_text())
    (row,) = result["steps"]
    assert row["label"] == "jax/kd" and row["ratio_to_kd"] == 1.0  # the fields kept
    assert row["ms_per_step"] > 0 and row["throughput_ms_per_step"] > 0  # both measures
    assert row["throughput_images_per_s"] == pytest.approx(4e3 / row["throughput_ms_per_step"])
    assert row["throughput_ratio_to_kd"] == 1.0
    assert len(result["times_s"]["jax/kd"]) == 2
    assert len(result["throughput_times_s"]["jax/kd"]) == 2
    assert result["precision"]["jax_default_matmul_precision"] is None  # XLA's DEFAULT
    assert result["platform"] == "cpu" and result["compile_cache"] == ""


def test_reviewkd_lists_are_read_off_the_models():
    x = jax.numpy.zeros((2, 32, 32, 3))
    get = lambda name: models.get_model(name, num_classes=100)
    init = lambda name: jax.eval_shape(lambda: get(name).init(jax.random.key(0), x, train=False))
    wide = step.reviewkd_hparams(
        get("resnet8x4"), get("resnet32x4"), init("resnet8x4"), init("resnet32x4"), x
    )
    assert wide == step.HPARAMS["reviewkd"]  # the pinned recipe of the pair at 32 x 32
    s_vars, t_vars = init("resnet8"), init("resnet20")
    small = step.reviewkd_hparams(get("resnet8"), get("resnet20"), s_vars, t_vars, x[:, :16, :16])
    assert small["in_channels"] == small["out_channels"] == (16, 32, 64, 64)
    assert small["shapes"] == small["out_shapes"] == (1, 4, 8, 16)


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
