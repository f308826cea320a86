"""The command line: `python -m luminet_jax.main` (subprocesses, one CPU device)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from luminet_jax import quickstart

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _main(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "luminet_jax.main", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_misspelled_override_fails_before_training(tmp_path):
    result = _main(
        "--config=configs/quickstart.py:teacher",
        f"--workdir={tmp_path}",
        "--config.batchsize=16",
    )
    assert result.returncode != 0
    assert "batch_size" in result.stderr  # "Did you mean ..."
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.slow
def test_main_trains_and_resumes(tmp_path):
    common = [
        "--config=configs/quickstart.py:teacher",
        f"--workdir={tmp_path}",
        "--config.student.name=resnet8",
        "--config.batch_size=16",
    ]
    result = _main(*common, "--config.num_train_steps=2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "step 2/2" in result.stderr
    result = _main(*common, "--config.num_train_steps=3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "starting at 2" in result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 3 and 0.0 <= summary["last_top1"] <= 1.0


def test_quickstart_table():
    summary = dict(best_top1=0.5, last_top1=0.25, wall_s=12.0)
    table = quickstart.format_table([("resnet8", "kd", summary)])
    assert table.splitlines()[2] == "| resnet8 | kd | 0.5000 | 0.2500 | 12 s |"
