"""The stages of benchmarks/gpu_run.py: their commands (full and smoke sizes) and the figures
each one keeps. The env and trainer stages run benchmarks/gpu_helpers.py's functions in
their own subprocess (`gpu_run.py --stage NAME`).

Importing this module imports neither JAX nor PyTorch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
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
    """The detection train step alone (no teacher to build)."""
    full = ["--sizes", "r18_fpn", "--batch", "8", "--steps", "5", "--throughput-steps", "10"]
    smoke = ["--sizes", "tiny", "--batch", "2", "--steps", "1", "--throughput-steps", "2"]
    cmd = [PY, "benchmarks/detection_step.py", *_sizes(ctx, full, smoke), *ctx.cache_flag]
    return Plan([Attempt("jax", [cmd], rows_figures)])


def plan_detection_distill(ctx: Context) -> Plan:
    """RoI-logit distillation from R-101-FPN (KD as the reference of LumiNet's ratio)."""
    full = ["--student", "r18_fpn", "--teacher", "r101_fpn", "--methods", "kd,luminet",
            "--batch", "8", "--steps", "5", "--throughput-steps", "5"]  # fmt: skip
    smoke = ["--student", "tiny", "--teacher", "tiny", "--methods", "luminet",
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
