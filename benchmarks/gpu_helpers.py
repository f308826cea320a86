"""The two stages of benchmarks/gpu_run.py that are functions rather than benchmark scripts,
run in their own subprocess (`gpu_run.py --stage NAME`): env (versions, devices,
nvidia-smi, float32 math flags) and trainer (a short real `luminet_jax.main` run, its
images/s and compile seconds, and the projected wall time of a 240-epoch CIFAR-100 run).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
PY = sys.executable
CIFAR100_TRAIN, RECIPE_BATCH, RECIPE_EPOCHS = 50_000, 64, 240  # the 240-epoch projection
PACKAGES = (
    "jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin",
    "jax-cuda12-pjrt", "libtpu", "flax", "optax", "orbax-checkpoint", "chex", "numpy", "scipy",
    "torch", "torchvision", "timm", "pillow", "tensorboard", "ml-collections", "tensorflow",
    "tensorflow-cpu", "tensorflow-datasets", "absl-py",
)  # fmt: skip
ENV_VARS = ("XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION", "JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES")


def run_helper(name: str, args: dict[str, Any], out: str) -> None:
    """Runs helper stage `name` in this (sub)process and writes its figures to `out`."""
    figures = {"env": env_figures, "trainer": trainer_figures}[name](args)
    pathlib.Path(out).write_text(json.dumps(figures, indent=1, default=str))


def _versions() -> dict[str, str | None]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _nvidia_smi() -> dict[str, Any]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"available": False}
    query = "name,driver_version,memory.total,memory.used,clocks.max.sm,power.limit"
    out = {"available": True}
    for key, cmd in (
        ("query", [exe, f"--query-gpu={query}", "--format=csv,noheader"]),
        ("summary", [exe]),
    ):
        try:
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
            out[key] = text.strip().splitlines()[:30]
        except (OSError, subprocess.SubprocessError) as e:
            out[key] = f"{type(e).__name__}: {e}"
    return out


def env_figures(args: dict[str, Any]) -> dict[str, Any]:
    """Versions, devices and the float32 math flags of both frameworks."""
    figures: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)),
        "packages": _versions(),
        "importable": {
            m: importlib.util.find_spec(m) is not None
            for m in ("tensorflow", "tensorflow_datasets", "ml_collections", "torch", "timm")
        },
        "env": {k: os.environ.get(k) for k in ENV_VARS},
        "nvidia_smi": _nvidia_smi(),
    }
    import jax

    devices = jax.devices()
    jax_info: dict[str, Any] = {
        "backend": jax.default_backend(),
        "device_count": len(devices),
        "device_kind": devices[0].device_kind,
        # None = XLA's DEFAULT: float32 dots and convolutions in TF32 on Ampere+ GPUs.
        "default_matmul_precision": jax.config.jax_default_matmul_precision,
    }
    try:
        stats = devices[0].memory_stats() or {}
        jax_info["bytes_limit"] = stats.get("bytes_limit")
    except Exception as e:  # noqa: BLE001 (CPU devices have no memory stats)
        jax_info["bytes_limit"] = f"n/a ({type(e).__name__})"
    figures["jax"] = jax_info
    if importlib.util.find_spec("torch") is not None:
        import torch

        from benchmarks import torch_step

        info = {"cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda}
        if info["cuda_available"]:
            info.update(
                device_name=torch.cuda.get_device_name(0),
                cudnn=torch.backends.cudnn.version(),
                **torch_step.tf32_flags(),
            )
        figures["torch"] = info
    return figures


_LOG_TIME = re.compile(r"^[IWEF]\d{4} (\d\d):(\d\d):(\d\d(?:\.\d+)?)")
_STEP = re.compile(r"step (\d+)/(\d+).*?\|\s*([\d.]+) img/s")
_COMPILE = re.compile(r"compil\w*[^\d\n]*([\d.]+)\s*s\b", re.IGNORECASE)


def parse_trainer_log(text: str, log_every: int) -> dict[str, Any]:
    """Images/s and compile seconds from `luminet_jax.main`'s log ("step k/N ... | X img/s"
    lines, absl timestamps). Steady images/s: the median over the log windows after the
    first; compile: a logged compile time if the trainer logs one, else the first window's
    time less `log_every` steady steps (an estimate)."""
    steps, times, last_time, first_step_gap = [], [], None, None
    logged_compile = None
    for line in text.splitlines():
        m = _LOG_TIME.match(line)
        t = None
        if m:
            t = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
        s = _STEP.search(line)
        if s:
            steps.append((int(s.group(1)), int(s.group(2)), float(s.group(3))))
            if len(steps) == 1 and t is not None and last_time is not None:
                first_step_gap = (t - last_time) % 86400
            times.append(t)
        elif _COMPILE.search(line) and logged_compile is None and "cache" not in line.lower():
            logged_compile = float(_COMPILE.search(line).group(1))
        if t is not None and not s:
            last_time = t
    if len(steps) < 2:
        raise RuntimeError(f"the trainer logged {len(steps)} step lines; need 2 or more")
    rates = sorted(r for _, _, r in steps[1:])
    img_s = rates[len(rates) // 2]
    out = {"logged_steps": steps[-1][0], "images_per_s": img_s, "first_window_images_per_s":
           steps[0][2]}  # fmt: skip
    if logged_compile is not None:
        out["compile_s"], out["compile_source"] = logged_compile, "trainer log"
    elif first_step_gap is not None:
        steady = log_every * RECIPE_BATCH / img_s
        out["compile_s"] = round(max(first_step_gap - steady, 0.0), 2)
        out["compile_source"] = "estimate: first log window less its steady time"
    return out


def _main_run(workdir: pathlib.Path, config: str, overrides: dict[str, Any], timeout: float):
    cmd = [PY, "-m", "luminet_jax.main", f"--config={config}", f"--workdir={workdir}"]
    cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )
    text = proc.stdout + proc.stderr
    print(f"$ {' '.join(cmd)}\n{text[-20000:]}", flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"luminet_jax.main exited {proc.returncode}: {text[-2000:]}")
    return text, time.monotonic() - t0


def trainer_figures(args: dict[str, Any]) -> dict[str, Any]:
    """A short real run of the trainer: a teacher run, then LumiNet from it (the smoke run:
    one vanilla run, which needs no teacher)."""
    smoke = args["smoke"]
    teacher, student = ("", "resnet8") if smoke else ("resnet32x4", "resnet8x4")
    teacher_steps, steps, log_every = (0, 12, 3) if smoke else (20, 400, 50)
    common = {"compile_cache": args["cache_dir"] or "off", "eval_teacher": "false"}
    work = pathlib.Path(tempfile.mkdtemp(prefix="gpu_run_trainer_"))
    teacher_s = 0.0
    try:
        config, run = "quickstart:method=vanilla", {"student.name": student}
        if teacher:
            t_dir = work / "teacher"
            _, teacher_s = _main_run(t_dir, "quickstart:teacher", dict(
                common, **{"student.name": teacher, "num_train_steps": teacher_steps,
                           "log_every_steps": teacher_steps, "eval_every_steps": teacher_steps}),
                timeout=600)  # fmt: skip
            config = f"quickstart:method=luminet,teacher_dir={t_dir}"
            run["teacher.name"] = teacher
        run.update(num_train_steps=steps, log_every_steps=log_every, eval_every_steps=steps)
        text, student_s = _main_run(work / "student", config, dict(common, **run), timeout=600)
        metrics = (work / "student" / "metrics.jsonl").read_text().splitlines()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    parsed = parse_trainer_log(text, log_every)
    total_steps = RECIPE_EPOCHS * (CIFAR100_TRAIN // RECIPE_BATCH)
    train_s = total_steps * RECIPE_BATCH / parsed["images_per_s"]
    projected = train_s + parsed.get("compile_s", 0.0)
    return {
        "run": {
            "config": config.split(",")[0] + " (device-resident CIFAR-10 sample)",
            "teacher": teacher or None,
            "student": student,
            "batch": RECIPE_BATCH,
            "steps": steps,
            "teacher_steps": teacher_steps,
            "log_every": log_every,
        },  # fmt: skip
        **parsed,
        "teacher_run_s": round(teacher_s, 1),
        "student_run_s": round(student_s, 1),
        "metrics_records": len(metrics),
        "projection": {
            "what": f"{RECIPE_EPOCHS} CIFAR-100 epochs ({CIFAR100_TRAIN} images, batch "
            f"{RECIPE_BATCH}: {total_steps} steps) at the measured images/s, plus compile; "
            "evaluation not included",
            "steps": total_steps,
            "train_s": round(train_s, 1),
            "wall_s": round(projected, 1),
            "wall_h": round(projected / 3600, 2),
        },
    }
