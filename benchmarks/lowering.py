"""Proves that the training steps lower for accelerators: `jax.export` for CUDA, ROCm, TPU.

    python benchmarks/lowering.py --platforms cuda,tpu --devices N --out FILE [--cases PREFIX,...]

Each case is a step exactly as the trainer and the benchmarks jit it, exported with
`jax.export.export(jitted, platforms=[...])(*specs)` on abstract arguments
(`jax.ShapeDtypeStruct`s with the mesh's shardings): tracing and lowering to StableHLO for
that platform, no compilation and no accelerator needed. The mesh is N host CPU devices
(`JAX_PLATFORMS=cpu` and `--xla_force_host_platform_device_count=N` are set before JAX is
imported unless already set), so the exported modules are the N-device programs
(`shard_map` over "data", `check_vma=True`). Cases:

  train/<method>          every registered distiller's train step (`steps.make_train_step`
                          under `sharding.shard_train_step`), resnet32x4 -> resnet8x4,
                          CIFAR-100 32 x 32, batch 64, float32; the feature methods with
                          their `distiller.init` extra params and state (CRD: 50,000 samples),
                          DML on its cohort
  eval/resnet8x4          the eval step (`steps.make_eval_step`, masked sums)
  seeds/luminet           4 seeds in one job (`seed_runs.shard_train_step`: vmap over the runs)
  imagenet_bf16/luminet   resnet34 -> resnet18, 224 x 224, batch 256, bfloat16 compute
                          (LumiNet with the ImageNet recipe)
  detection/train         Faster R-CNN R-18-FPN, 800 x 800, batch 8
                          (`detection.steps.make_train_step`)
  detection/distill_<m>   its RoI-logit distillation from R-101-FPN (`detection.distill`;
                          KD, LumiNet: its statistics over the valid RoIs of the global batch)

All platforms are exported together in one multi-platform module (one trace, one lowering);
where that fails, each platform is exported alone, so each row says whether that platform
lowers. Batches are rounded up to a multiple of N. Writes a JSON list of {"case", "platform",
"devices", "ok", "error", "seconds"} (error "" when ok; seconds: trace + lowering).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PLATFORMS = ("cuda", "rocm", "tpu", "cpu")
PAIR = ("resnet32x4", "resnet8x4")  # Table 3's pair (teacher, student)
IMAGENET_PAIR = ("resnet34", "resnet18")
SEEDS = 4
DETECTION = ("r18_fpn", "r101_fpn")  # benchmarks/detection_step.SIZES (student, teacher)
# One or two methods where the step differs from another case only in the loss on the logits
# (each case traces its whole step again: ~2-4 s of CPU for these models).
DETECTION_METHODS = ("kd", "luminet")
IMAGENET_METHODS = ("luminet",)


def case_names() -> list[str]:
    """Every case, in the order they run (the train cases follow the distiller registry)."""
    from luminet_jax import distillers

    return [
        *(f"train/{m}" for m in sorted(distillers.DISTILLERS)),
        f"eval/{PAIR[1]}",
        "seeds/luminet",
        *(f"imagenet_bf16/{m}" for m in IMAGENET_METHODS),
        "detection/train",
        *(f"detection/distill_{m}" for m in DETECTION_METHODS),
    ]


def _hparams(method: str) -> dict[str, Any]:
    """The pair's recipe (its config's table, benchmarks/step.py), defaults elsewhere."""
    from benchmarks import step as step_bench

    return dict(step_bench.HPARAMS.get(method, {}))


def _specs(tree: Any, sharding: Any) -> Any:
    """Abstract copies of a tree's arrays (concrete or abstract) placed by `sharding`."""
    import jax

    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


def _round_up(batch: int, n: int) -> int:
    return math.ceil(batch / n) * n


class _Builder:
    """Builds (jitted step, abstract arguments) per case on one mesh."""

    def __init__(self, mesh):
        import jax

        from luminet_jax import optim, sharding

        self.mesh, self.n = mesh, mesh.devices.size
        self.rep = sharding.replicated(mesh)
        self.data = sharding.batch_sharding(mesh)
        self.tx = optim.make_optimizer(learning_rate=0.05, momentum=0.9, weight_decay=5e-4)
        self.key = jax.random.key(0)
        self._vars = {}

    def _classifier_vars(self, name, size, num_classes, dtype=None, **kw):
        """A classifier's abstract variables and its inference features (cached: every
        train case of a pair shares them)."""
        import jax
        import jax.numpy as jnp

        from luminet_jax import models

        key = (name, size, num_classes, dtype, tuple(sorted(kw.items())))
        if key not in self._vars:
            x = jnp.zeros((2, size, size, 3), jnp.float32)
            model = models.get_model(name, num_classes=num_classes, dtype=dtype, **kw)
            variables = jax.eval_shape(lambda k: model.init(k, x, train=False), self.key)
            feats = jax.eval_shape(lambda v: model.apply(v, x, train=False)[1], variables)
            self._vars[key] = (variables, feats)
        return self._vars[key]

    def _batch(self, batch, size, num_classes, **extra):
        import jax
        import jax.numpy as jnp

        b = _round_up(batch, self.n)
        out = {
            "image": jax.ShapeDtypeStruct((b, size, size, 3), jnp.float32, sharding=self.data),
            "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=self.data),
        }
        for key, dtype in extra.items():
            out[key] = jax.ShapeDtypeStruct((b,), dtype, sharding=self.data)
        return out

    def train(self, method, **kw):
        from luminet_jax import sharding

        step, args = self.train_parts(method, **kw)
        return sharding.shard_train_step(step, self.mesh), args

    def train_parts(self, method, *, pair=PAIR, size=32, num_classes=100, batch=64, dtype=None):
        """The per-shard train step (not jitted) and its abstract (state, teacher, batch)."""
        import jax
        import jax.numpy as jnp
        import numpy as np

        from benchmarks import step as step_bench
        from luminet_jax import distillers, models, sharding, state, steps

        teacher_name, student_name = pair
        hparams = _hparams(method)
        if pair == IMAGENET_PAIR:
            hparams = step_bench.hparams_for(method, ":".join(pair))
        distiller = distillers.get_distiller(method, **hparams)
        kw = dict(num_classes=num_classes, dtype=dtype, axis_name=sharding.DATA_AXIS)
        peers = {"peers": teacher_name} if method == "dml" else {}
        student = models.get_model(student_name, **kw, **peers)
        teacher = models.get_model(teacher_name, **kw)
        s_vars, s_feats = self._classifier_vars(student_name, size, num_classes, dtype, **peers)
        t_vars, t_feats = self._classifier_vars(teacher_name, size, num_classes, dtype)

        def init(s_feats, t_feats, t_vars):  # as benchmarks/step.init_distiller, abstractly
            return distiller.init(
                jax.random.key(2), s_feats, t_feats, teacher_variables=t_vars,
                num_train=step_bench.NUM_TRAIN, teacher=teacher,
            )  # fmt: skip

        extra = jax.eval_shape(init, s_feats, t_feats, t_vars)
        if distiller.uses_train_labels:  # CRD: its sampler's per-sample labels
            labels = np.random.default_rng(0).integers(0, num_classes, step_bench.NUM_TRAIN)
            extra = dict(extra, state=distiller.data_state(extra["state"], labels))
        abstract_state = jax.eval_shape(
            lambda v, e: state.create_train_state(v, self.tx, e), s_vars, extra
        )
        step = steps.make_train_step(
            student, teacher, distiller, self.tx, steps_per_epoch=782,
            axis_name=sharding.DATA_AXIS,
        )  # fmt: skip
        index = {"index": jnp.int32} if distiller.uses_train_labels else {}
        args = (
            _specs(abstract_state, self.rep),
            _specs(t_vars, self.rep),
            self._batch(batch, size, num_classes, **index),
        )
        return step, args

    def eval(self):
        import jax.numpy as jnp

        from luminet_jax import models, sharding, steps

        model = models.get_model(PAIR[1], num_classes=100, axis_name=sharding.DATA_AXIS)
        variables, _ = self._classifier_vars(PAIR[1], 32, 100)
        fn = sharding.shard_eval_step(steps.make_eval_step(model, axis_name="data"), self.mesh)
        return fn, (_specs(variables, self.rep), self._batch(64, 32, 100, mask=jnp.float32))

    def seeds(self):
        import jax

        from luminet_jax import seed_runs

        step, (abstract_state, t_vars, batch) = self.train_parts("luminet")
        job = seed_runs.shard_train_step(step, self.mesh, list(range(SEEDS)))
        stacked = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct((SEEDS, *a.shape), a.dtype, sharding=self.rep),
            abstract_state,
        )
        job_batch = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(
                (SEEDS, *a.shape), a.dtype, sharding=seed_runs.runs_batch_sharding(self.mesh)
            ),
            batch,
        )
        # seed_runs.shard_train_step returns a plain function around its jitted step (it adds
        # the seeds); jit it once more so that jax.export takes it.
        return jax.jit(job), (stacked, t_vars, job_batch)

    def detection(self, method=None):
        import jax

        from benchmarks import detection_distill, detection_step
        from luminet_jax import distillers, optim, sharding, state
        from luminet_jax.detection import distill, rcnn
        from luminet_jax.detection import steps as det_steps

        def detector(size):
            name, fields, side, num_classes = detection_step.SIZES[size]
            model = rcnn.get_detector(name, num_classes=num_classes, **fields)
            if size not in self._vars:  # abstract variables, shared by the cases
                self._vars[size] = rcnn.abstract_variables(model)
            return model, self._vars[size], side, num_classes

        student, v, side, num_classes = detector(DETECTION[0])
        tx = optim.make_optimizer(learning_rate=0.01, momentum=0.9, weight_decay=1e-4)
        abstract_state = jax.eval_shape(
            lambda v: state.create_train_state(
                {"params": v["params"], "batch_stats": v["frozen"]}, tx
            ),
            v,
        )
        if method is None:
            step, t_vars = det_steps.make_train_step(student, tx, axis_name="data"), None
        else:
            teacher, t_vars, _, _ = detector(DETECTION[1])
            distiller = distillers.get_distiller(method, **detection_distill.HPARAMS[method])
            step = distill.make_train_step(
                student, teacher, distiller, tx, steps_per_epoch=1000, axis_name="data"
            )
            t_vars = _specs(t_vars, self.rep)
        sample = detection_step.synthetic_batch(1, 32, num_classes)
        b = _round_up(8, self.n)
        batch = {
            k: jax.ShapeDtypeStruct(
                (b, side, side, 3) if k == "image" else (b, *a.shape[1:]), a.dtype,
                sharding=self.data,
            )
            for k, a in sample.items()
        }  # fmt: skip
        return sharding.shard_train_step(step, self.mesh), (
            _specs(abstract_state, self.rep),
            t_vars,
            batch,
        )

    def build(self, case: str) -> tuple[Callable, tuple]:
        kind, _, name = case.partition("/")
        if kind == "train":
            return self.train(name)
        if kind == "eval":
            return self.eval()
        if kind == "seeds":
            return self.seeds()
        if kind == "imagenet_bf16":
            import jax.numpy as jnp

            return self.train(
                name, pair=IMAGENET_PAIR, size=224, num_classes=1000, batch=256,
                dtype=jnp.bfloat16,
            )  # fmt: skip
        if kind == "detection":
            return self.detection(None if name == "train" else name.removeprefix("distill_"))
        raise KeyError(f"unknown case {case!r}; known: {case_names()}")


def _error_text(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text if len(text) <= 600 else text[:600] + " ..."


def run(
    platforms: list[str],
    devices: int,
    cases: list[str] | None = None,
    *,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """Exports every case for every platform on a mesh of the first `devices` devices.

    Args:
      platforms: jax.export platform names ("cuda", "rocm", "tpu", "cpu").
      devices: the mesh size (the host must expose that many devices).
      cases: case names or fnmatch patterns ("train/*"); None = all.
      verbose: print one line per export.

    Returns:
      One {"case", "platform", "devices", "ok", "error", "seconds"} per case and platform.
    """
    import jax
    from jax import export

    from luminet_jax import sharding

    unknown = sorted(set(platforms) - set(PLATFORMS))
    if unknown:
        raise ValueError(f"unknown platforms {unknown}; known: {PLATFORMS}")
    if len(jax.devices()) < devices:
        raise ValueError(f"{devices} devices asked, {len(jax.devices())} available")
    names = case_names()
    if cases:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) or n == p for p in cases)]
    builder = _Builder(sharding.make_mesh(jax.devices()[:devices]))
    results = []
    for case in names:
        t0 = time.perf_counter()
        try:
            fn, args = builder.build(case)
            build_error = ""
        except Exception as e:  # noqa: BLE001 (a case that cannot be built fails everywhere)
            fn, args, build_error = None, (), _error_text(e)
        # One multi-platform export first (one trace, one lowering with each platform's
        # rules); only if it fails, one export per platform to tell which ones fail.
        together = False
        if not build_error and len(platforms) > 1:
            try:
                export.export(fn, platforms=platforms)(*args)
                together = True
            except Exception:  # noqa: BLE001 (retried per platform below)
                pass
        build_s = time.perf_counter() - t0
        for platform in platforms:
            t1 = time.perf_counter()
            error = build_error
            if not error and not together:
                try:
                    export.export(fn, platforms=[platform])(*args)
                except Exception as e:  # noqa: BLE001 (reported per case and platform)
                    error = _error_text(e)
            row = {
                "case": case,
                "platform": platform,
                "devices": devices,
                "ok": not error,
                "error": error,
                # Trace + lowering; a shared export's time is reported on its first row.
                "seconds": round(build_s + time.perf_counter() - t1, 2),
            }
            build_s = 0.0
            results.append(row)
            if verbose:
                status = "ok" if row["ok"] else f"FAILED: {error[:200]}"
                print(f"{case:28s} {platform:5s} {devices} dev {row['seconds']:6.2f}s {status}")
    return results


def main(argv=None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--platforms", default="cuda,tpu", help=f"comma-separated, of {PLATFORMS}")
    p.add_argument("--devices", type=int, default=1, help="mesh size (host CPU devices)")
    p.add_argument("--cases", default="", help="comma-separated names or patterns (default all)")
    p.add_argument("--out", default="", help="write the JSON list here")
    args = p.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_force_host_platform_device_count={args.devices}".strip()
        )
    platforms = [s.strip() for s in args.platforms.split(",") if s.strip()]
    cases = [s.strip() for s in args.cases.split(",") if s.strip()] or None
    t0 = time.perf_counter()
    results = run(platforms, args.devices, cases, verbose=True)
    failed = [r for r in results if not r["ok"]]
    print(
        f"{len(results) - len(failed)}/{len(results)} exports ok "
        f"({len({r['case'] for r in results})} cases x {len(platforms)} platforms, "
        f"{args.devices} devices) in {time.perf_counter() - t0:.0f} s"
    )
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
