"""Times the detection distillation step per method (RoI-logit KD, DKD, LumiNet), interleaved.

    python benchmarks/detection_distill.py --student tb_student --teacher tb_teacher \
        --methods vanilla,kd,dkd,luminet --batch 8 --steps 10 [--throughput-steps 10] \
        [--cache-dir auto|DIR|off] [--out results.json]

Each step is `detection.distill.make_train_step` (student RPN + RoI heads, the teacher's
backbone, FPN and box head on the student's sampled RoIs, the distiller on the valid RoIs,
backward, SGD) jitted by `sharding.shard_train_step` on one synthetic batch on the devices.
All methods are compiled first, then timed one step of each per round, so the ratios to
KD's step compare steps under the same machine load; "vanilla" is the plain detection train
step (`detection.steps.make_train_step`, no teacher). Latency (each step waited for) and
throughput (steps back to back, one wait at the end) as benchmarks/step.py. Sizes:
`benchmarks/detection_step.py`. The hyperparameters are the detection configs' (every
ce_weight 0; DKD alpha 1, beta 0.25, T 1; LumiNet alpha 2, T 0.7). Importable without
TensorFlow and ml_collections.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import detection_step  # noqa: E402
from benchmarks.step import recipe  # noqa: E402
from benchmarks.timing import time_interleaved, time_throughput  # noqa: E402

HPARAMS = recipe("coco_frcnn_r101_r18")  # Table 4's recipe (its config's method table)


def build(args):
    """{method: (run one step, info)} for `time_interleaved`, all compiled."""
    import jax

    from luminet_jax import distillers, optim, sharding
    from luminet_jax import state as state_lib
    from luminet_jax.detection import distill, rcnn

    s_name, s_fields, side, num_classes = detection_step.SIZES[args.student]
    t_name, t_fields, _, _ = detection_step.SIZES[args.teacher]
    student = rcnn.get_detector(s_name, num_classes=num_classes, **s_fields)
    teacher = rcnn.get_detector(t_name, num_classes=num_classes, **t_fields)
    mesh = sharding.make_mesh(jax.devices()[: args.devices])
    rep = sharding.replicated(mesh)
    tx = optim.make_optimizer(learning_rate=0.01, momentum=0.9, weight_decay=1e-4)
    s_vars = rcnn.init_variables(student, 0, image_size=(side, side))
    t_vars = jax.device_put(rcnn.init_variables(teacher, 1, image_size=(side, side)), rep)
    data = sharding.to_global(detection_step.synthetic_batch(args.batch, side, num_classes), mesh)
    variants = {}
    for method in args.methods.split(","):
        distiller = distillers.get_distiller(method, **HPARAMS[method])
        step = sharding.shard_train_step(
            distill.make_train_step(student, teacher, distiller, tx, steps_per_epoch=1000,
                                    axis_name=sharding.DATA_AXIS),
            mesh,
        )  # fmt: skip
        make = lambda: jax.device_put(  # noqa: E731
            state_lib.create_train_state(
                jax.tree.map(lambda x: x.copy(), {"params": s_vars["params"],
                                                  "batch_stats": s_vars["frozen"]}), tx),
            rep,
        )  # fmt: skip
        holder = {"state": make()}
        start = time.perf_counter()
        holder["state"], metrics = step(holder["state"], t_vars, data)
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - start

        def run(sync=True, step=step, holder=holder):
            holder["state"], m = step(holder["state"], t_vars, data)
            if sync:
                jax.block_until_ready(m)
            return m

        info = {"compile_s": round(compile_s, 1),
                "loss_kd": float(metrics.get("distill/loss_kd", 0.0))}  # fmt: skip
        variants[method] = (run, info)
    return variants


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--student", default="tb_student")
    parser.add_argument("--teacher", default="tb_teacher")
    parser.add_argument("--methods", default="vanilla,kd,dkd,luminet")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--throughput-steps", type=int, default=0, help="0: latency only")
    parser.add_argument("--throughput-rounds", type=int, default=2)
    parser.add_argument("--cache-dir", default="auto", help="compile cache: auto, DIR, off")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    from luminet_jax import launch

    launch.enable_compilation_cache(args.cache_dir)
    variants = build(args)
    times = time_interleaved(variants, steps=args.steps, warmup=args.warmup)
    throughput = time_throughput(
        variants, steps=args.throughput_steps, rounds=args.throughput_rounds
    )
    kd_ms = statistics.median(times["kd"]) if "kd" in times else float("nan")
    rows = []
    for method, (_, info) in variants.items():
        ms = 1000 * statistics.median(times[method])
        rows.append({"method": method, "student": args.student, "teacher": args.teacher,
                     "batch": args.batch, "ms_per_step": round(ms, 1),
                     "images_per_s": round(args.batch * 1000 / ms, 2),
                     "ratio_to_kd": round(ms / (1000 * kd_ms), 3) if "kd" in times else None,
                     **info})  # fmt: skip
        if throughput[method]:
            t_ms = 1000 * statistics.median(throughput[method])
            rows[-1].update(throughput_ms_per_step=round(t_ms, 2),
                            throughput_images_per_s=round(args.batch * 1000 / t_ms, 2))  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
