"""The stages of benchmarks/gpu_run.py: their commands (full and smoke sizes), the figures
each one keeps, and the two helper stages that run inside their own subprocess (env: the
versions and devices; trainer: a short real `luminet_jax.main` run and its projection).

Importing this module imports neither JAX nor PyTorch; the helpers import them in their
subprocess.
"""

from __future__ import annotations

import dataclasses
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
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
PY = sys.executable
# Methods per stage, (full, smoke). The smoke run keeps a few per stage (every compile costs
# seconds on a small CPU); tests/lowering_test.py traces every method's step.
TABLE3 = ("kd,luminet,dkd,vanilla", "kd,luminet")
# Every other method of the paper's Table 3 (benchmarks/README.md), JAX only, each run with
# KD as the reference of its ratios; split in two so that a timeout loses half at most.
FEATURE_METHODS = ("kd,fitnet,at,rkd,pkt,sp,vid,nst", "kd,fitnet")
MORE_METHODS = ("kd,ofd,crd,reviewkd,dml", "kd,crd")
IMAGENET_METHODS = ("kd,luminet", "luminet")
SEEDS = ("4,8", "4")  # job sizes beside the single run
CIFAR100_TRAIN, RECIPE_BATCH, RECIPE_EPOCHS = 50_000, 64, 240  # the 240-epoch projection
PACKAGES = (
    "jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin",
    "jax-cuda12-pjrt", "libtpu", "flax", "optax", "orbax-checkpoint", "chex", "numpy", "scipy",
    "torch", "torchvision", "timm", "pillow", "tensorboard", "ml-collections", "tensorflow",
    "tensorflow-cpu", "tensorflow-datasets", "absl-py",
)  # fmt: skip
ENV_VARS = ("XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION", "JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES")
ROW_KEYS = (
    "label", "framework", "method", "device", "ms_per_step", "ms_min", "images_per_s",
    "throughput_ms_per_step", "throughput_images_per_s", "ratio_to_kd", "throughput_ratio_to_kd",
    "jax_over_torch", "throughput_jax_over_torch", "compile_s", "extra_params", "state_numbers",
)  # fmt: skip


@dataclasses.dataclass
class Context:
    """What the plans need: the mode, the cache, a scratch folder, the stages done so far."""

    smoke: bool
    cache_dir: str  # "" = off
    tmp: pathlib.Path
    torch: bool  # PyTorch importable
    script: str  # benchmarks/gpu_run.py, for the helper stages
    done: dict[str, dict] = dataclasses.field(default_factory=dict)

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["LUMINET_COMPILE_CACHE"] = self.cache_dir or "off"
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env.update(extra)
        return env

    @property
    def cache_flag(self) -> list[str]:
        return ["--cache-dir", self.cache_dir or "off"]


@dataclasses.dataclass
class Attempt:
    """Commands run in turn (each gets its own output file) and how their outputs become
    the stage's figures."""

    label: str
    commands: list[list[str]]
    figures: Callable[[list[dict]], dict]
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    out_flag: Callable[[pathlib.Path], list[str]] = lambda path: ["--out", str(path)]


@dataclasses.dataclass
class Plan:
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    skipped: str = ""  # non-empty: the stage cannot run here (the reason)


def _round(x: Any) -> Any:
    if isinstance(x, float):
        return float(f"{x:.4g}")
    return x


# ------------------------------------------------------------------------------ figures


def step_figures(outputs: list[dict]) -> dict[str, Any]:
    """benchmarks/step.py outputs (one, or JAX's and PyTorch's from separate processes)."""
    rows = [{k: _round(r[k]) for k in ROW_KEYS if k in r} for out in outputs for r in out["steps"]]
    if len(outputs) > 1:  # separate processes: the JAX/PT ratio of medians, not paired
        torch_ms = {r["method"]: r for r in rows if r["framework"] == "torch"}
        for r in rows:
            ref = torch_ms.get(r["method"]) if r["framework"] == "jax" else None
            if ref:
                r["jax_over_torch_unpaired"] = _round(r["ms_per_step"] / ref["ms_per_step"])
                if "throughput_ms_per_step" in r and "throughput_ms_per_step" in ref:
                    t = r["throughput_ms_per_step"] / ref["throughput_ms_per_step"]
                    r["throughput_jax_over_torch_unpaired"] = _round(t)
    first, cfg = outputs[0], outputs[0]["config"]
    precision = {}
    for out in outputs:
        precision.update(out.get("precision", {}))
    keys = ("pair", "batch", "dtype", "image_size", "num_classes", "channels_last", "steps",
            "warmup", "throughput_steps", "throughput_rounds", "tf32")  # fmt: skip
    return {
        "platform": first.get("platform"),
        "device_kind": first.get("device_kind"),
        "precision": precision,
        "config": {k: cfg[k] for k in keys if k in cfg},
        "rows": rows,
    }


def seeds_figures(outputs: list[dict]) -> dict[str, Any]:
    out = outputs[0]
    rows = [{"variant": k, **{f: _round(v) for f, v in r.items()}} for k, r in out["rows"].items()]
    keys = ("pair", "method", "batch", "dtype", "image_size", "steps", "throughput_steps")
    config = {k: out["args"][k] for k in keys}
    return {"backend": out["backend"], "device_kind": out["device"], "config": config, "rows": rows}


def rows_figures(outputs: list[dict]) -> dict[str, Any]:
    return {"rows": [{k: _round(v) for k, v in r.items()} for r in outputs[0]]}


def helper_figures(outputs: list[dict]) -> dict[str, Any]:
    return outputs[0]


# -------------------------------------------------------------------------------- plans


def torch_device(ctx: Context) -> tuple[str | None, str]:
    """PyTorch's device for the JAX-vs-PyTorch stages, or (None, why not)."""
    if not ctx.torch:
        return None, "PyTorch is not installed here"
    env = ctx.done.get("env") or {}
    backend = (env.get("jax") or {}).get("backend")
    cuda = (env.get("torch") or {}).get("cuda_available")
    if backend == "gpu" and cuda is False:
        return None, "JAX runs on the GPU but this PyTorch has no CUDA (no like-for-like ratio)"
    if cuda is None:  # the env stage did not say: PyTorch's own choice (cuda if it has one)
        return "auto", ""
    return ("cuda" if cuda else "cpu"), ""


def _step_cmd(ctx: Context, *args: str) -> list[str]:
    return [PY, "benchmarks/step.py", *args, *ctx.cache_flag]


def _versus_torch(ctx: Context, args: list[str]) -> Plan:
    """JAX and PyTorch in one process (paired ratios); if that fails (two CUDA stacks in one
    process, say), each framework in its own process."""
    device, why = torch_device(ctx)
    if device is None:
        only_jax = Attempt("jax only", [_step_cmd(ctx, *args, "--framework", "jax")], step_figures)
        only_jax.figures = lambda outs: dict(step_figures(outs), torch_skipped=why)
        return Plan([only_jax])
    dev = ["--torch-device", device]
    # JAX preallocates this share of the GPU, so that PyTorch fits beside it.
    share = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.45"}
    both = Attempt("one process", [_step_cmd(ctx, *args, *dev, "--framework", "both")],
                   step_figures, env=share)  # fmt: skip
    split = Attempt(
        "separate processes",
        [_step_cmd(ctx, *args, "--framework", fw, *dev) for fw in ("jax", "torch")],
        step_figures,
    )
    return Plan([both, split])


def _sizes(ctx: Context, full: list[str], smoke: list[str]) -> list[str]:
    return smoke if ctx.smoke else full


def _cifar(ctx: Context, throughput: str = "50") -> list[str]:
    full = ["--pair", "resnet32x4:resnet8x4", "--batch", "64", "--steps", "20", "--warmup", "3",
            "--throughput-steps", throughput, "--throughput-rounds", "3"]  # fmt: skip
    smoke = ["--pair", "resnet8:resnet8", "--batch", "8", "--image-size", "16", "--num-classes",
             "10", "--steps", "2", "--warmup", "1", "--throughput-steps", "2",
             "--throughput-rounds", "1"]  # fmt: skip
    return _sizes(ctx, full, smoke)


def plan_table3(dtype: str) -> Callable[[Context], Plan]:
    def plan(ctx: Context) -> Plan:
        args = [*_cifar(ctx), "--methods", TABLE3[ctx.smoke], "--dtype", dtype]
        if dtype == "bfloat16":
            args.append("--channels-last")  # PyTorch AMP's usual layout on GPUs
        return _versus_torch(ctx, args)

    return plan


def plan_table3_all(methods: tuple[str, str]) -> Callable[[Context], Plan]:
    def plan(ctx: Context) -> Plan:
        args = [*_cifar(ctx, "30"), "--methods", methods[ctx.smoke], "--framework", "jax"]
        cmd = _step_cmd(ctx, *args)
        return Plan([Attempt("jax", [cmd], step_figures)])

    return plan


def plan_imagenet(ctx: Context) -> Plan:
    full = ["--batch", "256", "--image-size", "224", "--num-classes", "1000", "--steps", "10",
            "--warmup", "2", "--throughput-steps", "20", "--throughput-rounds", "2"]  # fmt: skip
    smoke = ["--batch", "2", "--image-size", "32", "--num-classes", "10", "--steps", "1",
             "--warmup", "1", "--throughput-steps", "2", "--throughput-rounds", "1"]  # fmt: skip
    # The smoke run computes in float32: XLA:CPU compiles the bfloat16 ResNet-34 step about 6x
    # slower (table3_bfloat16 covers the bfloat16 path at a small size).
    dtype = "float32" if ctx.smoke else "bfloat16"
    args = ["--pair", "resnet34:resnet18", "--methods", IMAGENET_METHODS[ctx.smoke],
            "--dtype", dtype, "--channels-last", *_sizes(ctx, full, smoke)]  # fmt: skip
    return _versus_torch(ctx, args)


def plan_seeds(ctx: Context) -> Plan:
    full = ["--pair", "resnet32x4:resnet8x4", "--batch", "64", "--steps", "10", "--warmup", "1",
            "--throughput-steps", "30", "--throughput-rounds", "2"]  # fmt: skip
    smoke = ["--pair", "resnet8:resnet8", "--batch", "2", "--image-size", "16", "--num-classes",
             "10", "--steps", "1", "--warmup", "1", "--throughput-steps", "2",
             "--throughput-rounds", "1"]  # fmt: skip
    cmd = [PY, "benchmarks/seeds.py", "--method", "luminet", "--seeds", SEEDS[ctx.smoke],
           *_sizes(ctx, full, smoke), *ctx.cache_flag]  # fmt: skip
    return Plan([Attempt("jax", [cmd], seeds_figures)])


def plan_detection(ctx: Context) -> Plan:
    full = ["--student", "r18_fpn", "--teacher", "r101_fpn", "--methods", "vanilla,kd,luminet",
            "--batch", "8", "--steps", "5", "--throughput-steps", "5"]  # fmt: skip
    smoke = ["--student", "tiny", "--teacher", "tiny", "--methods", "vanilla,luminet",
             "--batch", "2", "--steps", "1", "--throughput-steps", "2"]  # fmt: skip
    cmd = [PY, "benchmarks/detection_distill.py", *_sizes(ctx, full, smoke), "--warmup", "1",
           "--throughput-rounds", "1", *ctx.cache_flag]  # fmt: skip
    return Plan([Attempt("jax", [cmd], rows_figures)])


def _helper(ctx: Context, name: str, **kw: Any) -> Plan:
    args = json.dumps(dict(kw, smoke=ctx.smoke, cache_dir=ctx.cache_dir))
    cmd = [PY, ctx.script, "--stage", name, "--stage-args", args]
    out_flag = lambda path: ["--stage-out", str(path)]
    return Plan([Attempt(name, [cmd], helper_figures, out_flag=out_flag)])


def plan_env(ctx: Context) -> Plan:
    return _helper(ctx, "env")


def plan_trainer(ctx: Context) -> Plan:
    return _helper(ctx, "trainer")


# ------------------------------------------------------------------------------ helpers


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
