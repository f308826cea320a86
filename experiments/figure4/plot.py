"""Figure 4 collector: panels (b) batch size, (c) temperature (lines) and (d) ensemble (bars).

python experiments/figure4/plot.py --root ROOT --out-dir experiments/figure4/results

Reads the sweep workdirs of `sweep.py` (ROOT/<pair>/<bs..|T..|teacher_..>/<method>/seed<k>),
and writes, for each panel present, a PNG, a markdown table and a JSON of the best top-1
(mean ± std over seeds): figure4b_batch.*, figure4c_temperature.*, figure4d_ensemble.*.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from experiments.common import plots, results  # noqa: E402

LABELS = {"vanilla": "student alone", "kd": "KD", "dkd": "DKD", "luminet": "LumiNet"}
PAPER_ENSEMBLE = 76.52  # resnet8x4 + wrn_40_2 -> wrn_16_2 with LumiNet (DESIGN.md section 3)


def _variant(group: str) -> tuple[str, str, str] | None:
    """ "pair/bs64" -> ("batch", "pair", "64"); None for groups that are not sweeps."""
    pair, _, variant = group.rpartition("/")
    if not pair:
        return None
    for prefix, panel in (("bs", "batch"), ("T", "temperature"), ("teacher_", "ensemble")):
        if variant.startswith(prefix):
            return panel, pair, variant[len(prefix) :]
    return None


def panels(found: list[results.RunResult]) -> dict[str, dict]:
    """panel -> {"pair", "values": [...], "methods": {method: {value: (mean, std, n)}}}."""
    stats = results.aggregate(found, fields=("best_top1", "last_top1"))
    out: dict[str, dict] = {}
    for (group, method), row in stats.items():
        parsed = _variant(group)
        if parsed is None:
            continue
        panel, pair, value = parsed
        entry = out.setdefault(panel, {"pair": pair, "values": [], "methods": {}})
        if value not in entry["values"]:
            entry["values"].append(value)
        mean, std = row["best_top1"]
        entry["methods"].setdefault(method, {})[value] = (mean, std, row["n"])
    for panel, entry in out.items():
        if panel != "ensemble":
            entry["values"].sort(key=float)
        else:  # each teacher first, the ensemble last
            entry["values"].sort(key=lambda v: (v == "ensemble", v))
    return out


def _table(entry: dict, column: str) -> str:
    lines = [f"| {column} | method | seeds | best top-1 |", "|---|---|---|---|"]
    for method, by_value in entry["methods"].items():
        for value in entry["values"]:
            if value in by_value:
                mean, std, n = by_value[value]
                lines.append(
                    f"| {value} | {LABELS.get(method, method)} | {n} | "
                    f"{results.percent(mean, std)} |"
                )
    return "\n".join(lines)


def _series(entry: dict) -> dict:
    series = {}
    for method, by_value in entry["methods"].items():
        nan = (math.nan, math.nan, 0)
        points = [by_value.get(v, nan) for v in entry["values"]]
        series[LABELS.get(method, method)] = (
            [100 * p[0] for p in points],
            [100 * p[1] for p in points],
        )
    return series


def write_panels(found: list[results.RunResult], out_dir: str) -> dict[str, str]:
    """Writes each panel's PNG, table and JSON; returns panel -> PNG path."""
    written = {}
    for panel, entry in panels(found).items():
        name = {
            "batch": "figure4b_batch",
            "temperature": "figure4c_temperature",
            "ensemble": "figure4d_ensemble",
        }[panel]
        base = os.path.join(out_dir, name)
        if panel == "ensemble":
            method = "luminet" if "luminet" in entry["methods"] else next(iter(entry["methods"]))
            by_value = entry["methods"][method]
            values = [v for v in entry["values"] if v in by_value]
            written[panel] = plots.bar_plot(
                [v.replace(",", "+") for v in values],
                [100 * by_value[v][0] for v in values],
                [100 * by_value[v][1] for v in values],
                ylabel="best top-1 (%)",
                title=f"{entry['pair']}: teacher ensemble ({LABELS.get(method, method)})",
                path=base + ".png",
            )
            table = _table(entry, "teacher") + f"\n\nPaper (ensemble, LumiNet): {PAPER_ENSEMBLE}"
        else:
            xs = [float(v) for v in entry["values"]]
            written[panel] = plots.line_plot(
                xs,
                _series(entry),
                xlabel="batch size" if panel == "batch" else "temperature T",
                ylabel="best top-1 (%)",
                title=f"{entry['pair']}: {panel}",
                path=base + ".png",
                log2_x=panel == "batch",
            )
            table = _table(entry, "batch size" if panel == "batch" else "T")
        results.write_table(table, base + ".md")
        results.write_json(entry, base + ".json")
    return written


def main(argv=None):
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    found = results.collect(args.root)
    written = write_panels(found, args.out_dir)
    if not written:
        raise SystemExit(f"No sweep runs (bs*/T*/teacher_*) under {args.root}")
    return written


if __name__ == "__main__":
    main()
