"""TAKD's runner (experiments/takd/run.py): teacher, assistant and student workdirs in order,
the student distilled from the assistant's workdir, and a second invocation skips them.

Tiny: resnet8 everywhere on a generated 8x8 colour folder (4 classes), 3 steps, in-process.
"""

from __future__ import annotations

import json
import os

import image_data
import jax
import jax.numpy as jnp
import pytest

from experiments.takd import run as takd_run
from luminet_jax import models

TINY = [
    "student.name=resnet8",
    "teacher.name=resnet8",
    "batch_size=16",
    "eval_batch_size=16",
    "num_train_steps=3",
    "log_every_steps=3",
    "eval_every_steps=3",
    "ckpt_every_steps=3",
    "eval_teacher=true",
]


def _commands(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("python")]


def test_print_only_lists_both_hops_per_pair_and_seed(tmp_path, capsys):
    argv = ["--seeds", "0,1", "--root", str(tmp_path), "--print-only", "--override", "num_epochs=2"]
    records = takd_run.main(argv)
    lines = _commands(capsys)
    assert len(records) == len(lines) == 2 * 2 * 2  # pairs x seeds x hops
    assert not os.listdir(tmp_path)  # printing writes nothing
    first, second = lines[0], lines[1]  # res32x4_res8x4, seed 0
    assert f"--workdir={tmp_path}/res32x4_res8x4/takd_assistant/seed0" in first
    assert (
        "--config.student.name=resnet20x4" in first and "--config.teacher.name=resnet32x4" in first
    )
    assert f"--config.teacher.checkpoint={tmp_path}/teachers/resnet32x4" in first
    assert f"--workdir={tmp_path}/res32x4_res8x4/takd/seed0" in second
    assert (
        "--config.student.name=resnet8x4" in second and "--config.teacher.name=resnet20x4" in second
    )
    assert f"--config.teacher.checkpoint={tmp_path}/res32x4_res8x4/takd_assistant/seed0" in second
    assert all(":method=kd" in ln and "--config.num_epochs=2" in ln for ln in lines)
    res56 = [ln for ln in lines if "/res56_res20/" in ln]
    assert (
        "--config.student.name=resnet32" in res56[0] and "teacher.name=resnet32 " in res56[1] + " "
    )


def test_finished_workdirs_are_skipped_without_training(tmp_path, capsys):
    root = str(tmp_path)
    argv = ["--pairs", "res56_res20", "--seeds", "0", "--root", root, "--train-teachers"]
    takd_run.main([*argv, "--print-only"])
    workdirs = [ln.split("--workdir=")[1].split()[0] for ln in _commands(capsys)]
    assert workdirs == [
        os.path.join(root, "teachers", "resnet56"),
        os.path.join(root, "res56_res20", "takd_assistant", "seed0"),
        os.path.join(root, "res56_res20", "takd", "seed0"),
    ]
    for w in workdirs:
        os.makedirs(w)
        with open(os.path.join(w, "summary.json"), "w") as f:
            json.dump({"steps": 1}, f)
    records = takd_run.main([*argv, "--in-process"])
    assert [(r["workdir"], r["status"]) for r in records] == [(w, "skipped") for w in workdirs]


@pytest.mark.slow  # three tiny trainings: ~110 s of CPU
def test_three_workdirs_in_order_then_skipped(tmp_path):
    data = image_data.colour_folder(tmp_path / "data", train=16, test=4)
    root = str(tmp_path / "runs")
    argv = ["--pairs", "res56_res20", "--seeds", "0", "--root", root, "--assistant", "resnet8"]
    argv += ["--train-teachers", "--in-process", "--override", f"dataset.name=image_folder:{data}"]
    for item in TINY:
        argv += ["--override", item]
    records = takd_run.main(argv)
    want = [
        os.path.join(root, "teachers", "resnet8"),
        os.path.join(root, "res56_res20", "takd_assistant", "seed0"),
        os.path.join(root, "res56_res20", "takd", "seed0"),
    ]
    assert [r["workdir"] for r in records] == want
    assert [r["status"] for r in records] == ["done"] * 3
    summaries = [json.load(open(os.path.join(w, "summary.json"))) for w in want]
    assert all(s["steps"] == 3 for s in summaries)
    # Each hop's teacher, evaluated at its start, is the previous hop's final model.
    assert summaries[1]["teacher_top1"] == pytest.approx(summaries[0]["last_top1"])
    assert summaries[2]["teacher_top1"] == pytest.approx(summaries[1]["last_top1"])
    again = takd_run.main(argv)
    assert [r["status"] for r in again] == ["skipped"] * 3


@pytest.mark.parametrize("name, params", [("resnet20x4", 4_333_700), ("resnet32", 472_756)])
def test_assistant_sizes_as_stated(name, params):
    """The README's counts (100 classes); resnet20x4 = resnet8x4 + two blocks per stage."""
    model = models.get_model(name, num_classes=100)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    assert sum(leaf.size for leaf in jax.tree.leaves(shapes["params"])) == params
    blocks = sum(2 * (9 * c * c + 2 * c) for c in (64, 128, 256))  # two convs + two BNs
    assert 1_233_540 + 2 * blocks == 4_333_700
