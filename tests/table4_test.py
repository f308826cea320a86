"""experiments/table4_detection: the runner's commands and the collector's table and plot,
on synthetic metrics files (no training)."""

import json
import math

import pytest

from experiments.table4_detection import collect, run


def _write(workdir, evals, teacher_ap=None):
    workdir.mkdir(parents=True)
    lines = [{"step": 0, "teacher_AP": teacher_ap}] if teacher_ap is not None else []
    lines += [
        {"step": step, "eval/AP": ap, "eval/AP50": 2 * ap, "eval/AP75": ap / 2}
        for step, ap in evals
    ]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_runner_builds_teacher_then_students_with_the_teacher_workdir(tmp_path, capsys):
    records = run.main(
        ["--root", str(tmp_path), "--train-teachers", "--print-only", "--seeds", "0,1",
         "--methods", "kd,luminet", "--config-arg", "steps=30"]
    )  # fmt: skip
    assert len(records) == 5 and all(r["status"] == "printed" for r in records)
    lines = capsys.readouterr().out.strip().splitlines()[1:]
    assert "method=teacher,steps=30" in lines[0] and "teachers/tiny_boxes" in lines[0]
    assert all(f"teacher.checkpoint={tmp_path}/teachers/tiny_boxes" in x for x in lines[1:])
    assert "tiny_boxes/luminet/seed1" in lines[-1] and "steps=30,method=luminet" in lines[-1]


def test_collector_takes_the_best_ap_eval_and_averages_seeds(tmp_path):
    _write(tmp_path / "tiny_boxes/kd/seed0", [(10, 0.10), (20, 0.30), (30, 0.20)], 0.5)
    _write(tmp_path / "tiny_boxes/kd/seed1", [(10, 0.10), (30, 0.50)])
    _write(tmp_path / "tiny_boxes/luminet/seed0", [(30, 0.40)])
    _write(tmp_path / "teachers/tiny_boxes", [(30, 0.60)])
    out = tmp_path / "res" / "table4.md"
    rows, stats, text = collect.main(
        ["--root", str(tmp_path), "--out", str(out), "--csv", str(tmp_path / "res/runs.csv"),
         "--plot", str(tmp_path / "res/t4.png")]
    )  # fmt: skip
    kd = stats[("tiny_boxes", "kd")]
    assert kd["n"] == 2
    assert kd["AP"][0] == pytest.approx(0.40) and kd["AP"][1] == pytest.approx(math.sqrt(0.02))
    assert kd["AP50"][0] == pytest.approx(0.80) and kd["last_AP"][0] == pytest.approx(0.35)
    assert stats[("tiny_boxes", "teacher")]["AP"][0] == pytest.approx(0.60)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [x.split("|")[2].strip() for x in lines[2:5]] == ["teacher", "kd", "luminet"]
    # Paired by seed: only seed 0 has both (LumiNet 0.40 - KD's best 0.30).
    assert lines[-1] == "| tiny_boxes | kd | +10.00 | +10.00 |"
    assert "40.00 ± 14.14" in text and "33.97 / 54.66 / 36.62" in text
    assert (tmp_path / "res/t4.png").stat().st_size > 1000
    assert len((tmp_path / "res/runs.csv").read_text().splitlines()) == 1 + 4


def test_paired_differences_are_luminet_minus_method_on_common_seeds():
    rows = [
        {"pair": "p", "method": m, "seed": k, "AP": ap}
        for m, k, ap in [("luminet", 0, 0.30), ("luminet", 1, 0.20), ("vanilla", 0, 0.25),
                         ("vanilla", 1, 0.25), ("dkd", 2, 0.1), ("teacher", -1, 0.9)]
    ]  # fmt: skip
    assert collect.paired(rows).splitlines()[2:] == [
        "| p | vanilla | +5.00, -5.00 | +0.00 ± 7.07 |"
    ]
    assert collect.paired(rows[2:]) == ""  # no LumiNet run


def test_collector_without_evals_says_where_it_looked(tmp_path):
    with pytest.raises(SystemExit, match="No finished evals"):
        collect.main(["--root", str(tmp_path)])
