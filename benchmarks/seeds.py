"""Images/s of one run vs several seeds trained together in one job (luminet_jax.seed_runs).

    python benchmarks/seeds.py --pair resnet32x4:resnet8x4 --method luminet --seeds 4,8 \
        --batch 64 --steps 10 [--throughput-steps 50] [--dtype bfloat16] [--devices N] \
        [--cache-dir auto|DIR|off] [--out results.json]

The variants are the trainer's own steps (`steps.make_train_step`, jitted by
`sharding.shard_train_step` for one run and by `seed_runs.shard_train_step` for each job of
S seeds, `--seeds` a comma-separated list of S) on synthetic batches already on the
devices, compiled first and then timed INTERLEAVED (one step of each per round), so the
ratios compare steps under the same machine load. Two measures, as benchmarks/step.py:
latency (each step waited for) and throughput (`--throughput-steps` steps back to back,
one wait at the end, `--throughput-rounds` rounds). A job processes S x batch images per
step; reported per variant: ms/step, images/s (all runs), images/s per seed (= per
run: what each run of the job trains at), and the speedup, the job's images/s over the
single run's (1.0 = no gain from batching the runs; on an accelerator that one small
student leaves idle it is larger).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import step as step_bench  # noqa: E402

# The pair's recipes (its config's method table) for the methods timed here.
HPARAMS = {m: step_bench.HPARAMS[m] for m in ("vanilla", "kd", "luminet")}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pair", default="resnet32x4:resnet8x4", help="teacher:student")
    p.add_argument("--method", default="luminet", choices=sorted(HPARAMS))
    p.add_argument("--seeds", default="5", help="runs (seeds) per job, e.g. 4,8 (1 seed is added)")
    p.add_argument("--batch", type=int, default=64, help="global batch per run")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--steps", type=int, default=10, help="timed rounds")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--throughput-steps", type=int, default=20, help="0: latency only")
    p.add_argument("--throughput-rounds", type=int, default=3)
    p.add_argument("--cache-dir", default="auto", help="JAX's compilation cache (auto|DIR|off)")
    p.add_argument("--out", default="")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    counts = sorted({int(s) for s in str(args.seeds).split(",") if s.strip()} - {1})
    if not counts or min(counts) < 2:
        raise SystemExit(f"--seeds {args.seeds!r}: give job sizes >= 2, e.g. 4,8")
    if "cpu" in os.environ.get("JAX_PLATFORMS", "cpu") and args.devices > 1:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={args.devices}"
        )
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks import step as step_bench
    from benchmarks import timing
    from luminet_jax import distillers, launch, models, optim, seed_runs, sharding, state, steps

    cache_dir = launch.enable_compilation_cache(args.cache_dir)
    mesh = sharding.make_mesh(jax.devices()[: args.devices])
    rep = sharding.replicated(mesh)
    teacher_name, student_name = args.pair.split(":")
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else None
    kw = dict(num_classes=args.num_classes, dtype=dtype)
    student = models.get_model(student_name, axis_name=sharding.DATA_AXIS, **kw)
    teacher = models.get_model(teacher_name, axis_name=sharding.DATA_AXIS, **kw)
    x = jnp.zeros((2, args.image_size, args.image_size, 3), jnp.float32)
    init_s = jax.jit(lambda k: models.get_model(student_name, **kw).init(k, x, train=False))
    t_vars = jax.device_put(
        jax.jit(lambda k: models.get_model(teacher_name, **kw).init(k, x, train=False))(
            jax.random.key(100)
        ),
        rep,
    )
    tx = optim.make_optimizer(learning_rate=0.05, momentum=0.9, weight_decay=5e-4)
    hparams = dict(step_bench.PAIR_HPARAMS.get(args.pair, {}).get(args.method, {}))
    distiller = distillers.get_distiller(args.method, **(hparams or HPARAMS[args.method]))
    step = steps.make_train_step(
        student, teacher, distiller, tx, steps_per_epoch=781, axis_name=sharding.DATA_AXIS
    )
    rng = np.random.default_rng(0)

    def batch(n):
        shape = (n, args.batch, args.image_size, args.image_size, 3)
        return {
            "image": rng.normal(size=shape).astype(np.float32),
            "label": rng.integers(0, args.num_classes, shape[:2]).astype(np.int32),
        }

    host_states = [
        jax.tree.map(np.asarray, state.create_train_state(init_s(jax.random.key(k)), tx))
        for k in range(max(counts))
    ]
    one_batch = jax.device_put(
        {k: v[0] for k, v in batch(1).items()}, sharding.batch_sharding(mesh)
    )
    # name -> [step, state, batch, runs]
    jobs = {"1 seed": [sharding.shard_train_step(step, mesh), None, one_batch, 1]}
    jobs["1 seed"][1] = jax.device_put(host_states[0], rep)
    for n in counts:
        job_batch = jax.device_put(batch(n), seed_runs.runs_batch_sharding(mesh))
        jobs[f"{n} seeds"] = [
            seed_runs.shard_train_step(step, mesh, list(range(n))),
            seed_runs.stack(host_states[:n], mesh),
            job_batch,
            n,
        ]
    compile_s = {}
    variants = {}
    for name, v in jobs.items():
        t0 = time.perf_counter()
        for _ in range(max(args.warmup, 1)):  # the first call compiles
            v[1], m = v[0](v[1], t_vars, v[2])
            jax.block_until_ready(m)
        compile_s[name] = time.perf_counter() - t0

        def run(sync=True, v=v):
            v[1], m = v[0](v[1], t_vars, v[2])
            if sync:
                jax.block_until_ready(m)
            return m

        variants[name] = (run, {})
    print(f"compiled and warmed up in {sum(compile_s.values()):.1f} s", flush=True)
    times = timing.time_interleaved(variants, steps=args.steps, warmup=0)
    throughput = timing.time_throughput(
        variants, steps=args.throughput_steps, rounds=args.throughput_rounds
    )
    rows = {}
    for name, v in jobs.items():
        n = v[3]
        ms = statistics.median(times[name]) * 1e3
        row = dict(
            seeds=n,
            ms_per_step=ms,
            images_per_s=n * args.batch / ms * 1e3,
            images_per_s_per_seed=args.batch / ms * 1e3,
            compile_s=compile_s[name],
        )
        if n > 1:  # paired per round: the job's images/s over the single run's
            row["speedup"] = statistics.median(
                (n * a) / b for a, b in zip(times["1 seed"], times[name])
            )
        if throughput[name]:
            t_ms = statistics.median(throughput[name]) * 1e3
            row.update(
                throughput_ms_per_step=t_ms,
                throughput_images_per_s=n * args.batch / t_ms * 1e3,
                throughput_images_per_s_per_seed=args.batch / t_ms * 1e3,
            )
        rows[name] = row
    for row in rows.values():
        if row["seeds"] > 1 and "throughput_images_per_s" in row:
            row["throughput_speedup"] = (
                row["throughput_images_per_s"] / rows["1 seed"]["throughput_images_per_s"]
            )
    result = dict(
        args=vars(args),
        device=str(jax.devices()[0].device_kind),
        backend=jax.default_backend(),
        compile_cache=cache_dir,
        rows=rows,
        # The largest job's paired speedup (the single figure of earlier versions).
        speedup=rows[f"{max(counts)} seeds"]["speedup"],
    )
    print(
        f"{args.pair} {args.method} batch {args.batch} {args.dtype} on {args.devices} "
        f"{jax.default_backend()} device(s):"
    )
    for name, r in rows.items():
        line = (
            f"  {name:>8s}: {r['ms_per_step']:8.1f} ms/step  {r['images_per_s']:8.1f} img/s"
            f"  {r['images_per_s_per_seed']:8.1f} img/s per seed"
        )
        if "throughput_images_per_s" in r:
            line += f"  | throughput {r['throughput_images_per_s']:8.1f} img/s"
        if "speedup" in r:
            line += f"  | job / single (paired) {r['speedup']:.2f}"
        print(line)
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
