"""Reduced-scale collector: accuracy per method and paired per-seed differences.

python experiments/reduced_cifar10/collect.py --root ROOT \
    --out-dir experiments/reduced_cifar10/results

Writes table.md (best/last top-1, mean ± std over seeds, and the mean wall time per run with
its ratio to KD's; runs not finished yet are left out; paired differences between methods
on the same seed, i.e. the same student initialization and batch order, with a paired t
statistic: LumiNet minus every other method found, and KD minus the student alone),
runs.csv (one line per run), summary.json, accuracy.png (bars) and paired.png (LumiNet
minus each method, mean ± std over seeds).
"""

import argparse
import math
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from experiments.common import plots, results  # noqa: E402
from experiments.reduced_cifar10 import run  # noqa: E402

LABELS = {
    "vanilla": "student alone", "kd": "KD", "dkd": "DKD", "luminet": "LumiNet",
    "fitnet": "FitNet", "at": "AT", "rkd": "RKD", "ofd": "OFD", "crd": "CRD",
    "reviewkd": "ReviewKD", "dml": "DML",
}  # fmt: skip
# LumiNet minus every other method (same seed), then KD minus the student alone.
PAIRS = (
    ("luminet", "kd"), ("luminet", "vanilla"), ("kd", "vanilla"),
    *(("luminet", m) for m in ("dkd", *run.FEATURE_METHODS)),
)  # fmt: skip


def paired(found, a: str, b: str, field: str = "best_top1") -> dict:
    """Per-seed a - b over the seeds both have: the differences, mean, std, t statistic."""
    by_seed = {(r.method, r.seed): getattr(r, field) for r in found}
    seeds = sorted(s for (m, s) in by_seed if m == a and (b, s) in by_seed)
    diffs = [by_seed[(a, s)] - by_seed[(b, s)] for s in seeds]
    mean, std = results.mean_std(diffs)
    t = mean / (std / math.sqrt(len(diffs))) if len(diffs) > 1 and std > 0 else math.nan
    return {"seeds": seeds, "diffs": diffs, "mean": mean, "std": std, "t": t}


def _number(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def tables(found) -> tuple[str, dict]:
    """The markdown (accuracy table + paired differences) and the summary dict."""
    stats = results.aggregate(found, fields=("best_top1", "last_top1", "wall_s"))
    order = [m for m in LABELS if any(k[1] == m for k in stats)]
    kd_wall = stats.get((run.GROUP, "kd"), {}).get("wall_s", (math.nan,))[0]
    lines = [
        "| method | seeds | best top-1 | last top-1 | wall s per run | x KD |",
        "|---|---|---|---|---|---|",
    ]
    for method in order:
        row = stats[(run.GROUP, method)]
        wall = row["wall_s"][0]
        lines.append(
            f"| {LABELS[method]} | {row['n']} | {results.percent(*row['best_top1'])} | "
            f"{results.percent(*row['last_top1'])} | {_number(wall, '.0f')} | "
            f"{_number(wall / kd_wall, '.2f')} |"
        )
    teacher = [r.teacher_top1 for r in found if not math.isnan(r.teacher_top1)]
    if teacher:
        lines.append(f"\nTeacher (resnet20) top-1: {100 * teacher[0]:.2f}")
    diffs = {}
    lines += [
        "",
        "| paired difference (best top-1) | seeds | per seed (points) | mean ± std | t |",
        "|---|---|---|---|---|",
    ]
    for a, b in PAIRS:
        d = paired(found, a, b)
        if not d["seeds"]:
            continue
        diffs[f"{a}-{b}"] = d
        per_seed = ", ".join(f"{100 * x:+.1f}" for x in d["diffs"])
        lines.append(
            f"| {LABELS[a]} − {LABELS[b]} | {len(d['seeds'])} | {per_seed} | "
            f"{results.percent(d['mean'], d['std'])} | {d['t']:.2f} |"
        )
    summary = {"methods": {m: stats[(run.GROUP, m)] for m in order}, "paired": diffs}
    return "\n".join(lines), summary


def main(argv=None):
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    found = []
    for r in results.collect(args.root):
        if r.group != run.GROUP:
            continue
        if math.isnan(r.wall_s):  # still training: the summary is written at the end
            print(f"Skipped (not finished: no summary yet): {r.workdir}", file=sys.stderr)
        else:
            found.append(r)
    if not found:
        raise SystemExit(f"No runs under {args.root}/{run.GROUP}")
    table, summary = tables(found)
    results.write_table(table, os.path.join(args.out_dir, "table.md"))
    results.write_csv(found, os.path.join(args.out_dir, "runs.csv"))
    results.write_json(summary, os.path.join(args.out_dir, "summary.json"))
    methods = list(summary["methods"])
    plots.bar_plot(
        [LABELS[m] for m in methods],
        [100 * summary["methods"][m]["best_top1"][0] for m in methods],
        [100 * np.nan_to_num(summary["methods"][m]["best_top1"][1]) for m in methods],
        ylabel="best test top-1 (%)",
        title="resnet20 -> resnet8, CIFAR-10 sample (CPU)",
        path=os.path.join(args.out_dir, "accuracy.png"),
    )
    lumi = [(k.split("-")[1], d) for k, d in summary["paired"].items() if k.startswith("luminet-")]
    if lumi:
        plots.bar_plot(
            [LABELS[m] for m, _ in lumi],
            [100 * d["mean"] for _, d in lumi],
            [100 * np.nan_to_num(d["std"]) for _, d in lumi],
            ylabel="LumiNet − method, best top-1 (points)",
            title="paired by seed, resnet20 -> resnet8, CIFAR-10 sample (CPU)",
            path=os.path.join(args.out_dir, "paired.png"),
        )
    return found, summary, table


if __name__ == "__main__":
    main()
