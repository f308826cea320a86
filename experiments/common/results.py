"""Reads the studies' workdirs back and turns them into tables.

Each workdir holds the trainer's `metrics.jsonl` (luminet_jax/metrics_io.py): eval records
with "eval/top1" and "eval/top5" (fractions in [0, 1]), a "teacher_top1" record when a
teacher was loaded, and "summary/*" records at the end. Workdirs are found by the layout of
`runs.py`: ROOT/<group...>/<method>/seed<k>/metrics.jsonl.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pathlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from luminet_jax import metrics_io

_SEED = re.compile(r"^seed(\d+)$")


@dataclasses.dataclass(frozen=True)
class RunResult:
    """The numbers of one finished (or partly finished) run; accuracies are fractions."""

    group: str
    method: str
    seed: int
    best_top1: float
    last_top1: float
    top5_at_best: float
    last_top5: float
    teacher_top1: float
    evals: int
    steps: int
    wall_s: float
    workdir: str


def read_run(workdir: str, *, group: str = "", method: str = "", seed: int = 0) -> RunResult | None:
    """Summarizes one workdir's metrics.jsonl (None when it has no eval yet).

    Top-5 is reported at the eval with the best top-1 (and at the last eval).
    """
    records = metrics_io.read_metrics(workdir)
    evals: dict[int, dict[str, Any]] = {}
    for record in records:
        if "eval/top1" in record:
            evals[record["step"]] = record  # a resumed run may repeat a step: last one wins
    if not evals:
        return None
    ordered = [evals[step] for step in sorted(evals)]
    best = max(ordered, key=lambda r: r["eval/top1"])
    teacher = next((r["teacher_top1"] for r in records if "teacher_top1" in r), math.nan)
    wall = next((r["summary/wall_s"] for r in records[::-1] if "summary/wall_s" in r), math.nan)
    return RunResult(
        group=group,
        method=method,
        seed=seed,
        best_top1=float(best["eval/top1"]),
        last_top1=float(ordered[-1]["eval/top1"]),
        top5_at_best=float(best.get("eval/top5", math.nan)),
        last_top5=float(ordered[-1].get("eval/top5", math.nan)),
        teacher_top1=float(teacher),
        evals=len(ordered),
        steps=int(ordered[-1]["step"]),
        wall_s=float(wall),
        workdir=workdir,
    )


def collect(root: str) -> list[RunResult]:
    """All runs under ROOT/<group...>/<method>/seed<k> (teacher runs under ROOT/teachers/X
    have no seed folder and are not included)."""
    results = []
    root_path = pathlib.Path(root)
    for path in sorted(root_path.rglob(metrics_io.METRICS_FILE)):
        parts = path.parent.relative_to(root_path).parts
        match = _SEED.match(parts[-1]) if len(parts) >= 3 else None
        if not match:
            continue
        result = read_run(
            str(path.parent), group="/".join(parts[:-2]), method=parts[-2], seed=int(match[1])
        )
        if result is not None:
            results.append(result)
    return results


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return math.nan, math.nan
    std = float(np.std(array, ddof=1)) if array.size > 1 else math.nan
    return float(np.mean(array)), std


def aggregate(
    results: Iterable[RunResult],
    fields: Sequence[str] = ("best_top1", "last_top1"),
) -> dict[tuple[str, str], dict[str, Any]]:
    """(group, method) -> {"n", "seeds", field: (mean, std) for each field}, in first-seen order."""
    grouped: dict[tuple[str, str], list[RunResult]] = {}
    for result in results:
        grouped.setdefault((result.group, result.method), []).append(result)
    out = {}
    for key, group in grouped.items():
        row: dict[str, Any] = {"n": len(group), "seeds": sorted(m.seed for m in group)}
        for field in fields:
            row[field] = mean_std([getattr(m, field) for m in group])
        out[key] = row
    return out


def percent(mean: float, std: float = math.nan) -> str:
    """0.7512, 0.0031 -> "75.12 ± 0.31"; NaN -> "-"."""
    if math.isnan(mean):
        return "-"
    text = f"{100 * mean:.2f}"
    return text if math.isnan(std) else f"{text} ± {100 * std:.2f}"


def markdown_table(
    stats: Mapping[tuple[str, str], Mapping[str, Any]],
    *,
    fields: Mapping[str, str],
    paper: Mapping[tuple[str, str], float | str] | None = None,
    paper_label: str = "paper top-1",
    group_label: str = "pair",
    groups: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
) -> str:
    """A markdown table with one row per (group, method): seeds, mean ± std of each field.

    Args:
      stats: from `aggregate`.
      fields: field -> column title, e.g. {"best_top1": "best top-1"}.
      paper: (group, method) -> the paper's number in percent, or a preformatted string.
      group_label: the first column's title.
      groups, methods: row order (others follow in first-seen order).
    """
    keys = list(stats)

    def rank(key):
        group, method = key
        g = groups.index(group) if groups and group in groups else len(groups or ())
        m = methods.index(method) if methods and method in methods else len(methods or ())
        return (g, m, keys.index(key))

    header = [group_label, "method", "seeds", *fields.values()]
    if paper is not None:
        header.append(paper_label)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in sorted(keys, key=rank):
        row = stats[key]
        cells = [key[0], key[1], str(row["n"])] + [percent(*row[f]) for f in fields]
        if paper is not None:
            value = paper.get(key)
            cells.append(
                "-" if value is None else value if isinstance(value, str) else f"{value:.2f}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(results: Sequence[RunResult], path: str) -> None:
    """One line per run (the raw numbers behind a table)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    names = [f.name for f in dataclasses.fields(RunResult)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        for result in results:
            writer.writerow([getattr(result, name) for name in names])


def write_json(data: Any, path: str) -> None:
    """Writes `data` as indented JSON (tuple keys become "group|method")."""

    def plain(value):
        if isinstance(value, Mapping):
            return {
                ("|".join(k) if isinstance(k, tuple) else k): plain(v) for k, v in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, float) and math.isnan(value):
            return None
        return value

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(plain(data), f, indent=1)
        f.write("\n")


def write_table(text: str, path: str | None, *, echo: Callable[[str], Any] = print) -> None:
    """Prints the table and, when `path` is given, writes it there too (UTF-8: tables hold
    "±" and "−", which the locale's encoding, ASCII under LC_ALL=C, may lack)."""
    echo(text)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")


def collect_main(
    argv: Sequence[str] | None,
    *,
    description: str,
    fields: Mapping[str, str],
    paper: Mapping[tuple[str, str], float | str] | None = None,
    groups: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    group_label: str = "pair",
    paper_label: str = "paper top-1",
) -> tuple[list[RunResult], dict, str]:
    """The collectors' command line: --root DIR [--out TABLE.md] [--csv RUNS.csv] [--json S.json].

    Returns:
      (per-run results, aggregated stats, the markdown table).
    """
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--root", required=True, help="The study's root folder of workdirs.")
    parser.add_argument("--out", default=None, help="Also write the markdown table here.")
    parser.add_argument("--csv", default=None, help="Write one line per run here.")
    parser.add_argument("--json", default=None, help="Write the aggregated numbers here.")
    args = parser.parse_args(argv)
    found = collect(args.root)
    if not found:
        raise SystemExit(f"No finished evals under {args.root} (ROOT/<pair>/<method>/seed<k>).")
    stats = aggregate(found, fields=tuple(fields))
    table = markdown_table(
        stats,
        fields=fields,
        paper=paper,
        groups=groups,
        methods=methods,
        group_label=group_label,
        paper_label=paper_label,
    )
    write_table(table, args.out)
    if args.csv:
        write_csv(found, args.csv)
    if args.json:
        write_json(stats, args.json)
    return found, stats, table
