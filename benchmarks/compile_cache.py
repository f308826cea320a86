"""Time to the first training step with JAX's persistent compilation cache: cold vs warm.

    python benchmarks/compile_cache.py [--runs 2] [--config quickstart:teacher] [--steps 2]

Runs the same short `python -m luminet_jax.main` command `--runs` times in a row on one
fresh cache folder, and prints for each the seconds from the process start to its first
"step 1/N" log line (imports, data, model init and the train step's compilation), and the
warm / cold ratio. The first run fills the cache; the later ones read the compiled steps.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def seconds_to_first_step(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds to the first "step 1/" line, seconds for the whole run) of one subprocess."""
    start = time.monotonic()
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    first = None
    for line in proc.stderr:
        if first is None and "] step 1/" in line:
            first = time.monotonic() - start
    if proc.wait() != 0 or first is None:
        raise RuntimeError(f"{' '.join(args)} failed (exit {proc.returncode})")
    return first, time.monotonic() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--config", default="quickstart:teacher")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
        command = [
            sys.executable, "-m", "luminet_jax.main", f"--config={args.config}",
            f"--config.num_train_steps={args.steps}", "--config.log_every_steps=1",
            f"--config.compile_cache={tmp}/cache",
        ]  # fmt: skip
        runs = []
        for k in range(args.runs):
            first, total = seconds_to_first_step([*command, f"--workdir={tmp}/run{k}"], env)
            runs.append({"run": k, "cache": "cold" if k == 0 else "warm", "first_step_s": first,
                         "total_s": total})  # fmt: skip
            print(f"run {k} ({runs[-1]['cache']}): first step after {first:.1f} s, {total:.1f} s")
    warm = [r["first_step_s"] for r in runs[1:]]
    if warm:
        ratio = min(warm) / runs[0]["first_step_s"]
        print(f"warm / cold time to the first step: {ratio:.2f}")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
