"""luminet_jax/report.py: the table and curves of workdirs (written here, no training)."""

from __future__ import annotations

import json
import math

import pytest

from luminet_jax import report


def _write_run(workdir, evals, *, key="eval/top1", teacher=None, config=None, losses=(2.0, 1.5)):
    workdir.mkdir(parents=True)
    records = [{"step": 0, "teacher_top1": teacher}] if teacher is not None else []
    records += [{"step": 10 * (i + 1), "train/loss": loss} for i, loss in enumerate(losses)]
    records += [{"step": step, key: value} for step, value in evals]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if config is not None:
        (workdir / "config.json").write_text(json.dumps(config))


def test_one_run_best_last_and_its_config(tmp_path):
    config = {"student": {"name": "resnet8"}, "distiller": {"name": "kd"}}
    # Step 20 repeats (a resumed run): the last record of a step wins.
    _write_run(tmp_path / "kd", [(10, 0.3), (20, 0.9), (20, 0.5), (30, 0.4)], teacher=0.6,
               config=config)  # fmt: skip
    (run,) = report.find_runs(tmp_path / "kd")
    assert (run.label, run.method, run.student, run.metric) == ("kd", "kd", "resnet8", "top-1")
    assert (run.best, run.last, run.teacher, run.steps) == (0.5, 0.4, 0.6, 30)
    assert run.eval_curve == ((10, 0.3), (20, 0.5), (30, 0.4))
    assert run.loss_curve == ((10, 2.0), (20, 1.5))
    assert report.format_table([run]).splitlines()[2] == (
        "| kd | kd | resnet8 | top-1 | 0.5000 | 0.4000 | 0.6000 | 30 |"
    )


def test_seed_folders_and_a_folder_of_runs(tmp_path):
    config = {"student": {"name": "resnet8"}, "distiller": {"name": "luminet"}}
    (tmp_path / "qs" / "luminet").mkdir(parents=True)
    (tmp_path / "qs" / "luminet" / "config.json").write_text(json.dumps(config))
    for seed, (best, last) in enumerate([(0.5, 0.4), (0.7, 0.6)]):
        _write_run(tmp_path / "qs" / "luminet" / f"seed{seed}", [(10, best), (20, last)])
    _write_run(tmp_path / "qs" / "teacher", [(10, 0.8)])
    runs = report.find_runs(tmp_path / "qs")
    assert [r.label for r in runs] == ["qs/luminet/seed0", "qs/luminet/seed1", "qs/teacher"]
    assert runs[0].method == "luminet"  # the job's config.json
    rows = report.format_table(runs).splitlines()
    std = math.sqrt(2 * 0.1**2)  # sample std of two values 0.2 apart
    assert rows[4] == (  # right after the job's seeds, before the teacher
        f"| qs/luminet (mean ± std of 2 seeds) | luminet | resnet8 | top-1 | 0.6000 ± {std:.4f} "
        f"| 0.5000 ± {std:.4f} | - | 20 |"
    )
    # The job folder itself also reads as its seeds.
    assert len(report.find_runs(tmp_path / "qs" / "luminet")) == 2


def test_detection_runs_report_ap(tmp_path):
    _write_run(tmp_path / "det", [(5, 0.1), (10, 0.2)], key="eval/AP")
    (run,) = report.find_runs(tmp_path / "det")
    assert (run.metric, run.best, run.last) == ("AP", 0.2, 0.2)


def test_main_prints_the_table_and_writes_the_png(tmp_path, capsys):
    _write_run(tmp_path / "a", [(10, 0.3), (20, 0.35)])
    _write_run(tmp_path / "b", [(10, 0.2), (20, 0.25)], losses=(3.0, 2.5))
    out = tmp_path / "plots" / "curves.png"
    report.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)])
    text = capsys.readouterr().out
    assert "| a | - | - | top-1 | 0.3500 | 0.3500 | - | 20 |" in text
    assert f"Curves: {out}" in text
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    report.main([str(tmp_path / "a")])  # one workdir: the PNG goes into it
    assert (tmp_path / "a" / "curves.png").is_file()


def test_a_folder_without_metrics_is_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        report.main([str(tmp_path), "--no-plot"])
    assert info.value.code == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and ": error: no metrics.jsonl in" in lines[0], lines
