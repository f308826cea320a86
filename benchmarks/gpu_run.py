"""One budgeted accelerator run that produces every figure: `python benchmarks/gpu_run.py`.

    python benchmarks/gpu_run.py [--smoke] [--out DIR] [--cache-dir DIR] [--budget 540] \
        [--stages NAME,...] [--force]

Stages run in priority order (STAGES), each in its own subprocess with its own timeout, under
a total budget (default 540 s: one 10-minute allocation with a margin): a crash, an
out-of-memory or a timeout fails that stage only. `--out` (default `gpu_out/`) receives two
files, `results.json` (rewritten after every stage) and `run.log` (every stage's output);
`results.json` holds {"driver": {...}, "stages": [{"name", "ok", "seconds", ...figures}]},
a stage that cannot run says so in "skipped" (ok null) and a failed one gives "error" and
the end of its log. A rerun with the same `--out` keeps the stages already ok and runs the
others, so a second allocation continues where the first stopped. JAX's persistent
compilation cache lives in `--cache-dir` (default `gpu_cache/`), shared by the stages and by
reruns. `--smoke` runs every stage at tiny sizes (minutes on a 2-core CPU, PyTorch on the
CPU); without it the sizes are the paper's (resnet32x4 -> resnet8x4 at batch 64, resnet34 ->
resnet18 at 224 px and batch 256, R-18-FPN at 800 px and batch 8).

Stages: env (versions, devices, nvidia-smi, float32 math flags); table3_float32 and
table3_bfloat16 (KD, LumiNet, DKD, vanilla; JAX vs PyTorch on the same device, latency and
throughput; bfloat16 = JAX bf16 compute vs PyTorch bf16 autocast + channels_last);
table3_features and table3_more (every other Table 3 method, JAX, with KD as reference);
imagenet_bf16 (resnet34 -> resnet18 KD and LumiNet, JAX vs PyTorch AMP + channels_last);
seeds (1 vs 4 vs 8 seeds in one job); detection (the R-18-FPN train step at 800 px, batch
8); detection_distill (its RoI-logit distillation from R-101-FPN, KD and LumiNet); trainer
(a short real run of `luminet_jax.main` on the device-resident quickstart data: a
resnet32x4 teacher, then resnet8x4 LumiNet; images/s, compile seconds and the projected
wall time of 240 CIFAR-100 epochs).

The driver imports neither JAX nor PyTorch (the stages do), nor TensorFlow or ml_collections.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import gpu_helpers, gpu_stages  # noqa: E402

MIN_START_S = {False: 30.0, True: 5.0}  # a stage starts only with this much budget left
TAIL_LINES = 40


@dataclasses.dataclass(frozen=True)
class Stage:
    """A stage: its timeouts (full, smoke) and `plan(ctx) -> Plan` giving its commands."""

    name: str
    timeout_s: float
    smoke_timeout_s: float
    plan: Callable[[gpu_stages.Context], gpu_stages.Plan]


STAGES = [
    Stage("env", 90, 60, gpu_stages.plan_env),
    Stage("table3_float32", 150, 90, gpu_stages.plan_table3("float32")),
    Stage("table3_bfloat16", 150, 90, gpu_stages.plan_table3("bfloat16")),
    Stage("table3_features", 180, 90, gpu_stages.plan_table3_all(gpu_stages.FEATURE_METHODS)),
    Stage("table3_more", 180, 90, gpu_stages.plan_table3_all(gpu_stages.MORE_METHODS)),
    Stage("imagenet_bf16", 180, 90, gpu_stages.plan_imagenet),
    Stage("seeds", 150, 90, gpu_stages.plan_seeds),
    Stage("detection", 150, 90, gpu_stages.plan_detection),
    Stage("detection_distill", 240, 90, gpu_stages.plan_detection_distill),
    Stage("trainer", 180, 120, gpu_stages.plan_trainer),
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (a CPU check of every stage)")
    p.add_argument("--out", default="gpu_out", help="results.json and run.log go here")
    p.add_argument("--cache-dir", default="gpu_cache", help="JAX's compilation cache ('off')")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for all stages")
    p.add_argument("--stages", default="", help="only these stages (comma-separated)")
    p.add_argument("--force", action="store_true", help="rerun the stages already ok")
    p.add_argument("--stage", default="", help=argparse.SUPPRESS)  # internal: run a helper
    p.add_argument("--stage-out", default="", help=argparse.SUPPRESS)
    p.add_argument("--stage-args", default="{}", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _write_json(path: pathlib.Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_command(cmd, *, env, timeout_s, log) -> tuple[int | None, str, float]:
    """Runs `cmd` in its own process group; (exit code or None on timeout, output, seconds)."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=max(timeout_s, 1.0))
        except subprocess.TimeoutExpired:
            rc = None
            for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):
                try:
                    os.killpg(proc.pid, sig)  # the stage and anything it started
                    proc.wait(timeout=wait_s)
                    break
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    continue
        out.seek(0)
        text = out.read()
    log.write(f"$ {' '.join(map(str, cmd))}\n{text}\n[exit {rc}]\n")
    log.flush()
    return rc, text, time.monotonic() - t0


def _tail(text: str) -> str:
    return "\n".join(text.rstrip().splitlines()[-TAIL_LINES:])


def run_stage(stage: Stage, ctx: gpu_stages.Context, time_left: float, log) -> dict[str, Any]:
    """Runs one stage's plan: its commands in turn (a fallback after a failure, if any)."""
    plan = stage.plan(ctx)
    record: dict[str, Any] = {"name": stage.name}
    if plan.skipped:
        return dict(record, ok=None, seconds=0.0, skipped=plan.skipped)
    timeout = min(stage.smoke_timeout_s if ctx.smoke else stage.timeout_s, time_left)
    t0, cpu0 = time.monotonic(), _children_cpu_s()
    # CPU seconds of the stage's processes (those waited for: a killed one's may be missing).
    cpu = lambda: {"cpu_s": round(_children_cpu_s() - cpu0, 1)}
    errors = []
    for attempt in plan.attempts:
        outputs, failed = [], None
        for cmd in attempt.commands:
            left = timeout - (time.monotonic() - t0)
            if left < 1:
                failed = "no time left in the stage's timeout"
                break
            out_file = ctx.tmp / f"{stage.name}-{len(errors)}-{len(outputs)}.json"
            full = [*cmd, *attempt.out_flag(out_file)]
            log.write(f"\n===== {stage.name} ({attempt.label}) =====\n")
            rc, text, _ = _run_command(full, env=ctx.env(attempt.env), timeout_s=left, log=log)
            if rc != 0 or not out_file.exists():
                why = f"timed out after {left:.0f} s" if rc is None else f"exit code {rc}"
                failed = f"{attempt.label}: {why}"
                record["log_tail"] = _tail(text)
                break
            outputs.append(json.loads(out_file.read_text()))
        if failed is None:
            figures = attempt.figures(outputs)
            record.update(ok=True, seconds=round(time.monotonic() - t0, 1), **cpu(), **figures)
            if errors:
                record["earlier_attempts"] = errors
            record.pop("log_tail", None)
            return record
        errors.append(failed)
        if "timed out" in failed:
            break  # a fallback would not fit either
    seconds = round(time.monotonic() - t0, 1)
    return dict(record, ok=False, seconds=seconds, **cpu(), error="; ".join(errors))


def _load_previous(path: pathlib.Path, smoke: bool) -> tuple[dict[str, dict], list[dict]]:
    """The stages already ok in earlier runs of the same mode (kept on a rerun), and those
    runs' driver records."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}, []
    driver = data.get("driver", {})
    if driver.get("smoke") != smoke:
        return {}, []
    runs = [
        *driver.get("earlier_runs", []),
        {k: v for k, v in driver.items() if k != "earlier_runs"},
    ]
    return {s["name"]: s for s in data.get("stages", []) if s.get("ok")}, runs


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.stage:  # a helper stage, inside its subprocess
        gpu_helpers.run_helper(args.stage, json.loads(args.stage_args), args.stage_out)
        return 0
    names = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(names) - {s.name for s in STAGES})
    if unknown:
        raise SystemExit(f"unknown stages {unknown}; known: {[s.name for s in STAGES]}")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    previous, earlier_runs = _load_previous(results_path, args.smoke)
    cache_dir = "" if args.cache_dir.lower() in ("", "off") else os.path.abspath(args.cache_dir)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="gpu_run_"))
    ctx = gpu_stages.Context(
        smoke=args.smoke,
        cache_dir=cache_dir,
        tmp=tmp,
        torch=importlib.util.find_spec("torch") is not None,
        script=str(pathlib.Path(__file__).resolve()),
    )
    started = time.monotonic()
    driver = {
        "smoke": args.smoke,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "budget_s": args.budget,
        "cache_dir": cache_dir or "off",
        "python": sys.version.split()[0],
        "earlier_runs": earlier_runs,  # the driver records of the runs this one continues
    }
    stages: list[dict[str, Any]] = []
    try:
        with open(out / "run.log", "a") as log:
            log.write(f"\n######## gpu_run {driver['started']} {driver['argv']}\n")
            for stage in STAGES:
                if names and stage.name not in names:
                    if stage.name in previous:
                        stages.append(previous[stage.name])
                    continue
                if stage.name in previous and not args.force:
                    record = dict(previous[stage.name], rerun="kept from an earlier run")
                else:
                    left = args.budget - (time.monotonic() - started)
                    if left < MIN_START_S[args.smoke]:
                        record = {
                            "name": stage.name,
                            "ok": None,
                            "seconds": 0.0,
                            "skipped": f"budget: {max(left, 0):.0f} s left of {args.budget:.0f}"
                            " (rerun with the same --out to continue)",
                        }
                    else:
                        print(f"[gpu_run] {stage.name} ({left:.0f} s of budget left)", flush=True)
                        record = run_stage(stage, ctx, left, log)
                ctx.done[stage.name] = record
                stages.append(record)
                status = {True: "ok", False: "FAILED", None: "skipped"}[record.get("ok")]
                seconds = record.get("seconds", 0)
                print(f"[gpu_run] {stage.name}: {status} ({seconds} s)", flush=True)
                driver["seconds"] = round(time.monotonic() - started, 1)
                _write_json(results_path, {"driver": driver, "stages": stages})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bad = [s["name"] for s in stages if s.get("ok") is False]
    total = driver.get("seconds", 0)
    print(f"[gpu_run] {len(stages)} stages in {total} s; failed: {bad or 'none'}")
    print(f"[gpu_run] {results_path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
