"""Shows finished or running trainings: a table of best/last top-1 (or AP) and their curves.

    luminet-report WORKDIR... [--out curves.png] [--no-plot]

(`luminet-report` is `python -m luminet_jax.report`.) Each WORKDIR is a run's directory
(its `metrics.jsonl`), a job of several seeds (`W/seed{k}/`: one row per seed and their
mean), or a folder of runs (e.g. the quickstart's: `teacher/`, `kd/`, `luminet/`). The
table is markdown; the PNG has the training loss and the eval metric against the step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import re
import sys
from collections.abc import Sequence
from typing import Any

from luminet_jax import cli, metrics_io

_SEED = re.compile(r"^seed(\d+)$")
# Eval keys, most specific first: detection runs log AP, classification runs top-1.
_METRICS = (("eval/AP", "AP"), ("eval/top1", "top-1"))
_LOSS = "train/loss"


@dataclasses.dataclass(frozen=True)
class Run:
    """One run's numbers (accuracies as fractions) and its curves."""

    label: str
    workdir: str
    method: str
    student: str
    metric: str  # "top-1" or "AP"
    best: float
    last: float
    teacher: float
    steps: int
    loss_curve: tuple[tuple[int, float], ...]
    eval_curve: tuple[tuple[int, float], ...]


def _curve(records: Sequence[dict[str, Any]], key: str) -> tuple[tuple[int, float], ...]:
    """(step, value) of `key` in step order; a resumed run's repeated step: the last wins."""
    by_step = {r["step"]: float(r[key]) for r in records if key in r}
    return tuple(sorted(by_step.items()))


def _config(workdir: pathlib.Path) -> dict[str, Any]:
    for folder in (workdir, workdir.parent):  # seed{k}/ runs share the job's config
        path = folder / "config.json"
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                return {}
    return {}


def read_run(workdir: str | os.PathLike, label: str = "") -> Run | None:
    """Reads one workdir's metrics.jsonl (None when it has none)."""
    path = pathlib.Path(workdir)
    records = metrics_io.read_metrics(os.fspath(path))
    if not records:
        return None
    key, metric = next(
        ((k, name) for k, name in _METRICS if any(k in r for r in records)), _METRICS[-1]
    )
    best, last = metrics_io.best_and_last(records, key)
    teacher = next((r["teacher_top1"] for r in records if "teacher_top1" in r), math.nan)
    config = _config(path)
    student = config.get("student", {}).get("name", "")
    method = config.get("distiller", {}).get("name", "")
    return Run(
        label=label or path.name,
        workdir=os.fspath(path),
        method=method,
        student=student,
        metric=metric,
        best=float(best),
        last=float(last),
        teacher=float(teacher),
        steps=max((int(r["step"]) for r in records), default=0),
        loss_curve=_curve(records, _LOSS),
        eval_curve=_curve(records, key),
    )


def _seed_dirs(path: pathlib.Path) -> list[pathlib.Path]:
    dirs = [p for p in path.iterdir() if p.is_dir() and _SEED.match(p.name)]
    return sorted(dirs, key=lambda p: int(_SEED.match(p.name)[1]))


def find_runs(path: str | os.PathLike) -> list[Run]:
    """The runs in `path`: itself, its seed{k}/ folders, or its sub-folders' runs."""
    root = pathlib.Path(path)
    if not root.is_dir():
        return []
    label = root.name or os.fspath(root)
    run = read_run(root, label)
    if run is not None:
        return [run]
    seeds = [read_run(p, f"{label}/{p.name}") for p in _seed_dirs(root)]
    if any(seeds):
        return [r for r in seeds if r is not None]
    runs = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        runs += [dataclasses.replace(r, label=f"{label}/{r.label}") for r in find_runs(sub) if r]
    return runs


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def _mean_std(values: Sequence[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) < 2:
        return f"{mean:.4f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.4f} ± {std:.4f}"


def _job(run: Run) -> str:
    """The seed job a run belongs to ("" for a run without a seed{k} folder)."""
    head, _, tail = run.label.rpartition("/")
    return head if _SEED.match(tail) else ""


def _row(run: Run) -> str:
    return (
        f"| {run.label} | {run.method or '-'} | {run.student or '-'} | {run.metric} "
        f"| {_number(run.best)} | {_number(run.last)} | {_number(run.teacher)} | {run.steps} |"
    )


def _mean_row(job: str, runs_of_job: Sequence[Run]) -> str:
    first = runs_of_job[0]
    return (
        f"| {job} (mean ± std of {len(runs_of_job)} seeds) | {first.method or '-'} "
        f"| {first.student or '-'} | {first.metric} | {_mean_std([m.best for m in runs_of_job])} "
        f"| {_mean_std([m.last for m in runs_of_job])} | {_number(first.teacher)} | {first.steps} |"
    )


def format_table(runs: Sequence[Run]) -> str:
    """A markdown table: one row per run, and after a job's seeds their mean ± std."""
    lines = [
        "| run | method | student | metric | best | last | teacher top-1 | steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, run in enumerate(runs):
        lines.append(_row(run))
        job = _job(run)
        if job and (i + 1 == len(runs) or _job(runs[i + 1]) != job):
            runs_of_job = [r for r in runs if _job(r) == job]
            if len(runs_of_job) > 1:
                lines.append(_mean_row(job, runs_of_job))
    return "\n".join(lines)


def plot_curves(runs: Sequence[Run], out: str) -> str:
    """Writes the training loss and eval metric of each run against the step as a PNG."""
    import matplotlib  # noqa: PLC0415  (only the plot needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run in runs:
        if run.loss_curve:
            ax_loss.plot(*zip(*run.loss_curve), label=run.label, linewidth=1.2)
        if run.eval_curve:
            ax_eval.plot(*zip(*run.eval_curve), marker="o", markersize=3, label=run.label)
    metrics = sorted({run.metric for run in runs})
    ax_loss.set(title="training loss", xlabel="step", ylabel="loss (total)")
    ax_eval.set(title=f"eval {' / '.join(metrics)}", xlabel="step", ylabel=" / ".join(metrics))
    for ax in (ax_loss, ax_eval):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """The console script `luminet-report`; `argv` defaults to sys.argv[1:]."""
    cli.quiet_logs()
    # The table's "±" on a terminal without UTF-8 (LC_ALL=C): shown as "?", not a crash.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")
    prog = cli.command("luminet_jax.report", "luminet-report")
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="run directories")
    parser.add_argument(
        "--out",
        default=None,
        help="PNG of the curves (default: WORKDIR/curves.png for one WORKDIR, else ./curves.png)",
    )
    parser.add_argument("--no-plot", action="store_true", help="only print the table")
    args = parser.parse_args(argv)
    runs = []
    for workdir in args.workdirs:
        found = find_runs(workdir)
        if not found:
            cli.fail(
                f"no {metrics_io.METRICS_FILE} in {workdir} (nor in its seed*/ or sub-folders).",
                "give a training's --workdir (it writes metrics.jsonl from the first log step).",
                prog=prog,
            )
        runs += found
    print(format_table(runs))
    if not args.no_plot:
        out = args.out or (
            os.path.join(args.workdirs[0], "curves.png")
            if len(args.workdirs) == 1
            else "curves.png"
        )
        print(f"\nCurves: {plot_curves(runs, out)}")


if __name__ == "__main__":
    main()
