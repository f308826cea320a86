"""experiments/reduced_cifar10 with the feature-based and DML rows: the runner's commands,
every method's config builds its distiller (shapes only), and the collector pairs LumiNet
with each method seed by seed."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.common import runs
from experiments.reduced_cifar10 import collect, run
from luminet_jax import distillers, models

NUM_TRAIN, CLASSES = 3000, 10  # the CIFAR-10 sample


def test_all_methods_share_teacher_schedule_and_seeds(tmp_path, capsys):
    run.main(["--methods", "all", "--seeds", "0,1", "--epochs", "15", "--print-only",
              "--root", str(tmp_path)])  # fmt: skip
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("python")]
    assert len(lines) == 1 + 2 * len(run.ALL_METHODS)
    teacher = f"--config.teacher.checkpoint={tmp_path}/teachers/resnet20"
    for line in lines[1:]:
        method = line.split(":method=")[1].split(",")[0]
        assert "epochs=15" in line and "--config.dataset.name=cifar10_sample" in line
        assert (teacher in line) == (method not in run.NO_TEACHER), line
        assert (run.FEATURE_CONFIG in line) == (method in run.FEATURE_METHODS), line
    assert "--config.seed=0" in lines[1] and "--config.seed=1" in lines[-1]  # seed by seed


@pytest.mark.parametrize("method", run.FEATURE_METHODS)
def test_config_builds_the_distiller(method):
    config = runs.load_config(f"{run.FEATURE_CONFIG}:method={method},teacher_dir=/t")
    assert config.num_epochs == 15 and config.dataset.name == "cifar10_sample"
    distiller = distillers.get_distiller(**config.distiller)
    student = models.get_model(**config.student, num_classes=CLASSES)
    teacher = models.get_model(run.TEACHER, num_classes=CLASSES)
    x = jnp.zeros((2, 32, 32, 3), jnp.float32)

    def init():
        s_vars = student.init(jax.random.key(0), x, train=False)
        t_vars = teacher.init(jax.random.key(1), x, train=False)
        _, s_feats = student.apply(s_vars, x, train=False)
        _, t_feats = teacher.apply(t_vars, x, train=False)
        extra = distiller.init(
            jax.random.key(2), s_feats, t_feats,
            teacher_variables=t_vars, num_train=NUM_TRAIN, teacher=teacher,
        )  # fmt: skip
        return extra, s_vars

    extra, s_vars = jax.eval_shape(init)  # shapes only: no compile, no compute
    if method == "dml":  # the cohort of resnet8 and a resnet20 peer; no teacher is read
        assert config.teacher.checkpoint == "" and sorted(s_vars["params"]) == [
            "members_0", "members_1",
        ]  # fmt: skip
    else:
        assert config.teacher.name == run.TEACHER and config.teacher.checkpoint == "/t"
    if method == "crd":  # K negatives fit among the other classes' 2,700 samples
        assert extra["state"]["memory_s"].shape == (NUM_TRAIN, 128)
        assert distiller.num_negatives < NUM_TRAIN * (CLASSES - 1) / CLASSES


def _write_metrics(workdir, best, wall_s=None):
    workdir.mkdir(parents=True)
    rows = [{"step": 0, "teacher_top1": 0.6}, {"step": 10, "eval/top1": best, "eval/top5": 0.9}]
    if wall_s is not None:  # the summary a finished run writes last
        rows.append({"step": 10, "summary/wall_s": wall_s})
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_collector_pairs_luminet_with_every_method(tmp_path):
    rng = np.random.default_rng(0)
    accs = {m: 0.5 + 0.01 * rng.random(3) for m in run.ALL_METHODS}
    for method, values in accs.items():
        for seed, value in enumerate(values):
            wall_s = 300.0 if method == "dml" else 100.0 + seed  # KD's mean: 101 s
            _write_metrics(tmp_path / f"{run.GROUP}/{method}/seed{seed}", float(value), wall_s)
    _write_metrics(tmp_path / f"{run.GROUP}/kd/seed3", 0.9)  # still training: left out
    _, summary, table = collect.main(["--root", str(tmp_path), "--out-dir", str(tmp_path / "o")])
    assert summary["methods"]["kd"]["seeds"] == [0, 1, 2]
    assert list(summary["methods"]) == [m for m in collect.LABELS if m in accs]
    for method in ("kd", "vanilla", *run.FEATURE_METHODS):
        diff = summary["paired"][f"luminet-{method}"]
        np.testing.assert_allclose(diff["diffs"], accs["luminet"] - accs[method], atol=1e-12)
        assert diff["seeds"] == [0, 1, 2]
        assert f"| LumiNet − {collect.LABELS[method]} | 3 |" in table
    assert "| 101 | 1.00 |" in table and "| 300 | 2.97 |" in table  # wall time, ratio to KD
    assert (tmp_path / "o" / "paired.png").exists() and (tmp_path / "o" / "accuracy.png").exists()


@pytest.mark.slow  # trains a teacher and seven students 3 steps each in-process (minutes)
def test_every_added_method_trains_through_the_runner(tmp_path):
    import image_data  # noqa: PLC0415

    from experiments.common import results  # noqa: PLC0415

    data = image_data.colour_folder(tmp_path / "data", classes=4, train=16, test=8, size=32)
    root = str(tmp_path / "runs")
    tiny = ["--dataset", f"image_folder:{data}", "--in-process", "--seeds", "0", "--root", root]
    for item in ("batch_size=16", "eval_batch_size=16", "num_train_steps=3", "log_every_steps=3",
                 "eval_every_steps=3", "ckpt_every_steps=3", "eval_teacher=false"):  # fmt: skip
        tiny += ["--override", item]
    others = [m for m in run.FEATURE_METHODS if m != "crd"]
    records = run.main(["--methods", ",".join(others), *tiny])
    # CRD's K must fit among the other classes' 48 samples of this folder.
    records += run.main(["--methods", "crd", "--override", "distiller.num_negatives=16", *tiny])
    assert [r["status"] for r in records] == ["done"] * (1 + len(others)) + ["skipped", "done"]
    found = {r.method: r for r in results.collect(root) if r.group == run.GROUP}
    assert sorted(found) == sorted(run.FEATURE_METHODS)
    assert all(0.0 <= r.best_top1 <= 1.0 and r.steps == 3 for r in found.values())
