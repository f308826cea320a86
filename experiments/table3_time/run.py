"""Table 3: training time per batch and extra parameters, resnet32x4 -> resnet8x4, batch 64.

python experiments/table3_time/run.py --out-dir experiments/table3_time/results \
    [--methods vanilla,kd,dkd,luminet] [--batch 64] [--steps 20] [--table1-root ROOT] \
    [--in-process] [any other benchmarks/step.py option, e.g. --fast-conv --devices 1]

Runs benchmarks/step.py (the trainer's own jitted step: teacher forward, student
forward/backward, SGD update, on synthetic data already on the device; all methods compiled
first, then timed interleaved so that ratios compare steps under the same load) and turns its
JSON into the Table 3 layout: median ms per batch, ratio to KD (median of per-round ratios),
extra learnable parameters, and the best top-1 (mean over seeds) of Table 1's runs of the
pair when --table1-root is given. Writes step.json, table3.md and table3.json to --out-dir.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from experiments.common import results  # noqa: E402

PAIR = "res32x4_res8x4"  # Table 1's name of the benchmarked pair
PAPER_MS = {"kd": 11.0, "luminet": 11.0}  # the paper's Table 3 (its GPU); 0 extra params


def run_benchmark(bench_args: list[str], out_json: str, *, in_process: bool) -> dict:
    """benchmarks/step.py with `bench_args` (+ --out): its result dict."""
    argv = [*bench_args, "--out", out_json]
    if in_process:
        from benchmarks import step  # noqa: PLC0415

        return step.main(argv)
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "step.py"), *argv], check=True)
    with open(out_json) as f:
        return json.load(f)


def markdown(rows: list[dict], accuracy: dict) -> str:
    """One line per benchmarked variant: ms/batch, ratio to KD, extra params, accuracy, paper."""
    lines = [
        "| variant | ms / batch (median) | images / s | ratio to KD | extra params "
        "| best top-1 (Table 1 runs) | paper ms / batch |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r.get("ratio_to_kd", math.nan)
        paper = PAPER_MS.get(r["method"]) if r["framework"] == "jax" else None
        acc = accuracy.get(r["method"], (math.nan, math.nan))
        lines.append(
            f"| {r['label']} | {r['ms_per_step']:.1f} | {r['images_per_s']:.0f} | "
            f"{'-' if math.isnan(ratio) else f'{ratio:.2f}'} | {r['extra_params']} | "
            f"{results.percent(*acc)} | {'-' if paper is None else f'{paper:g}'} |"
        )
    return "\n".join(lines)


def main(argv=None):
    """Command line: see the module docstring; unknown options go to benchmarks/step.py."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--methods", default="vanilla,kd,dkd,luminet")
    parser.add_argument("--pair", default="resnet32x4:resnet8x4", help="teacher:student")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--table1-root", default=None)
    parser.add_argument("--in-process", action="store_true", help="Import step.py (tests).")
    args, bench_extra = parser.parse_known_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    bench_args = [
        "--pair",
        args.pair,
        "--methods",
        args.methods,
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        *bench_extra,
    ]
    out = run_benchmark(
        bench_args, os.path.join(args.out_dir, "step.json"), in_process=args.in_process
    )
    accuracy = {}
    if args.table1_root:
        stats = results.aggregate(results.collect(args.table1_root))
        accuracy = {m: row["best_top1"] for (g, m), row in stats.items() if g == PAIR}
    table = markdown(out["steps"], accuracy)
    table += f"\n\n{out['header']}"
    results.write_table(table, os.path.join(args.out_dir, "table3.md"))
    summary = {"header": out["header"], "rows": out["steps"], "accuracy": accuracy}
    results.write_json(summary, os.path.join(args.out_dir, "table3.json"))
    return out["steps"], table


if __name__ == "__main__":
    main()
