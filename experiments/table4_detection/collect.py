"""Table 4 collector: COCO AP / AP50 / AP75 per method (mean ± std over seeds), and a plot.

python experiments/table4_detection/collect.py --root ROOT \
    [--out results/table4.md] [--csv results/runs.csv] [--plot results/table4.png]

Per run, the numbers of the eval with the best AP (and the last eval's AP); the teacher row is
the teacher's own eval ("teacher_AP" as the students log it, else TEACHERS/<pair>'s run).
Then LumiNet's best AP minus each method's, paired by seed.
"""

import argparse
import csv
import math
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from experiments.common import plots, results  # noqa: E402
from experiments.table4_detection import study  # noqa: E402
from luminet_jax import metrics_io  # noqa: E402

FIELDS = ("AP", "AP50", "AP75", "last_AP")


def read_run(workdir: str) -> dict | None:
    """{AP, AP50, AP75 at the best-AP eval, last_AP, steps, teacher_AP} of a workdir."""
    records = metrics_io.read_metrics(workdir)
    evals = {r["step"]: r for r in records if "eval/AP" in r}  # a resume repeats: last wins
    if not evals:
        return None
    ordered = [evals[s] for s in sorted(evals)]
    best = max(ordered, key=lambda r: r["eval/AP"])
    teacher = next((r["teacher_AP"] for r in records if "teacher_AP" in r), math.nan)
    return {
        "AP": best["eval/AP"],
        "AP50": best.get("eval/AP50", math.nan),
        "AP75": best.get("eval/AP75", math.nan),
        "last_AP": ordered[-1]["eval/AP"],
        "steps": ordered[-1]["step"],
        "teacher_AP": teacher,
    }


def collect(root: str, teachers: str | None = None) -> list[dict]:
    """One row per run: pair, method, seed and `read_run`'s numbers (teacher rows seed -1)."""
    rows = []
    root_path = pathlib.Path(root)
    for path in sorted(root_path.glob(f"*/*/seed*/{metrics_io.METRICS_FILE}")):
        pair, method, seed_dir = path.parent.relative_to(root_path).parts
        if pair == "teachers" or not seed_dir[4:].isdigit():
            continue
        run = read_run(str(path.parent))
        if run is not None:
            rows.append({"pair": pair, "method": method, "seed": int(seed_dir[4:]), **run})
    teachers_dir = pathlib.Path(teachers or root_path / "teachers")
    for pair in sorted({r["pair"] for r in rows}):
        run = read_run(str(teachers_dir / pair)) if (teachers_dir / pair).is_dir() else None
        if run is not None:
            rows.append({"pair": pair, "method": "teacher", "seed": -1, **run})
    return rows


def table(rows: list[dict]) -> tuple[str, dict]:
    """The markdown table (percent, mean ± std over seeds) and its aggregated numbers."""
    stats: dict[tuple[str, str], dict] = {}
    for row in rows:
        stats.setdefault((row["pair"], row["method"]), {"runs": []})["runs"].append(row)
    for entry in stats.values():
        entry["n"] = len(entry["runs"])
        for field in FIELDS:
            entry[field] = results.mean_std([r[field] for r in entry["runs"]])
    order = {m: i for i, m in enumerate(study.ROWS)}
    keys = sorted(stats, key=lambda k: (k[0], order.get(k[1], len(order)), k[1]))
    header = (
        "| pair | method | seeds | AP | AP50 | AP75 | last AP | paper (COCO) AP / AP50 / AP75 |"
    )
    lines = [header, "|" + "---|" * 8]
    for key in keys:
        entry = stats[key]
        paper = study.PAPER.get(key[1])
        paper_text = " / ".join("-" if v is None else f"{v:.2f}" for v in paper) if paper else "-"
        cells = [key[0], key[1], str(entry["n"]), *(results.percent(*entry[f]) for f in FIELDS)]
        lines.append("| " + " | ".join([*cells, paper_text]) + " |")
    return "\n".join(lines), stats


def paired(rows: list[dict]) -> str:
    """LumiNet's best AP minus each other method's, seed by seed (points), per pair."""
    by = {(r["pair"], r["method"], r["seed"]): r["AP"] for r in rows if r["seed"] >= 0}
    lines = ["| pair | LumiNet − method | per seed (AP points) | mean ± std |", "|---|---|---|---|"]
    for pair, method in sorted({(p, m) for p, m, _ in by if m != "luminet"}):
        seeds = sorted(k for p, m, k in by if (p, m) == (pair, method) and (p, "luminet", k) in by)
        if not seeds:
            continue
        diffs = [100 * (by[(pair, "luminet", k)] - by[(pair, method, k)]) for k in seeds]
        mean, std = results.mean_std(diffs)
        per_seed = ", ".join(f"{d:+.2f}" for d in diffs)
        spread = f"{mean:+.2f} ± {std:.2f}" if len(diffs) > 1 else f"{mean:+.2f}"
        lines.append(f"| {pair} | {method} | {per_seed} | {spread} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def main(argv=None):
    """Prints (and optionally writes) the table, the per-run CSV and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--teachers", default=None, help="Default ROOT/teachers.")
    parser.add_argument("--out", default=None)
    parser.add_argument("--csv", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    rows = collect(args.root, args.teachers)
    if not rows:
        raise SystemExit(f"No finished evals under {args.root} (ROOT/<pair>/<method>/seed<k>).")
    text, stats = table(rows)
    if differences := paired(rows):
        text += "\n\nPaired by seed (same seed: same initialization and batch order):\n\n"
        text += differences
    results.write_table(text, args.out)
    if args.csv:
        os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
        with open(args.csv, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if args.plot:
        keys = [k for k in stats if k[1] != "teacher"]
        plots.bar_plot(
            [f"{m}" if len({p for p, _ in keys}) == 1 else f"{p}/{m}" for p, m in keys],
            [100 * stats[k]["AP"][0] for k in keys],
            [100 * stats[k]["AP"][1] for k in keys],
            ylabel="box AP (%)",
            title="Table 4 (reduced): best AP, mean ± std over seeds",
            path=args.plot,
        )
    return rows, stats, text


if __name__ == "__main__":
    main()
