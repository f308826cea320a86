"""Images/s of one run vs several seeds trained together in one job (luminet_jax.members).

    python benchmarks/seeds.py --pair resnet32x4:resnet8x4 --method luminet --seeds 5 \
        --batch 64 --steps 10 [--dtype bfloat16] [--devices N] [--out results.json]

Both variants are the trainer's own steps (`steps.make_train_step`, jitted by
`sharding.shard_train_step` for one run and by `members.shard_train_step` for the job) on
synthetic batches already on the devices, compiled first and then timed INTERLEAVED (one
step of each per round), so the ratio compares steps under the same machine load. The job
processes seeds x batch images per step; the reported speedup is the job's images/s over
the single run's (1.0 = no gain from batching the members; on an accelerator that one small
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

HPARAMS = {
    "vanilla": dict(ce_weight=1.0),
    "kd": dict(ce_weight=0.1, kd_weight=0.9, temperature=4.0),
    "luminet": dict(ce_weight=2.0, alpha=33.0, temperature=4.0, warmup_epochs=20),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pair", default="resnet32x4:resnet8x4", help="teacher:student")
    p.add_argument("--method", default="luminet", choices=sorted(HPARAMS))
    p.add_argument("--seeds", type=int, default=5, help="members of the job")
    p.add_argument("--batch", type=int, default=64, help="global batch per member")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--steps", type=int, default=10, help="timed rounds")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default="")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if "cpu" in os.environ.get("JAX_PLATFORMS", "cpu") and args.devices > 1:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={args.devices}"
        )
    import jax
    import jax.numpy as jnp
    import numpy as np

    from luminet_jax import distillers, members, models, optim, sharding, state, steps

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
    distiller = distillers.get_distiller(args.method, **HPARAMS[args.method])
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
        for k in range(args.seeds)
    ]
    one_batch = jax.device_put(
        {k: v[0] for k, v in batch(1).items()}, sharding.batch_sharding(mesh)
    )
    job_batch = jax.device_put(batch(args.seeds), members.member_batch_sharding(mesh))
    variants = {}
    t0 = time.perf_counter()
    single = sharding.shard_train_step(step, mesh)
    variants["1 seed"] = [single, jax.device_put(host_states[0], rep), one_batch, 1]
    job = members.shard_train_step(step, mesh, list(range(args.seeds)))
    variants[f"{args.seeds} seeds"] = [job, members.stack(host_states, mesh), job_batch, args.seeds]
    for v in variants.values():
        for _ in range(args.warmup):
            v[1], m = v[0](v[1], t_vars, v[2])
            jax.block_until_ready(m)
    print(f"compiled and warmed up in {time.perf_counter() - t0:.1f} s", flush=True)
    times = {name: [] for name in variants}
    for _ in range(args.steps):
        for name, v in variants.items():
            t = time.perf_counter()
            v[1], m = v[0](v[1], t_vars, v[2])
            jax.block_until_ready(m)
            times[name].append(time.perf_counter() - t)
    rows = {}
    for name, v in variants.items():
        ms = statistics.median(times[name]) * 1e3
        rows[name] = dict(ms_per_step=ms, images_per_s=v[3] * args.batch / ms * 1e3)
    # Paired per round: the job's images/s over the single run's in the same round.
    paired = statistics.median(
        (args.seeds * a) / b for a, b in zip(times["1 seed"], times[f"{args.seeds} seeds"])
    )
    result = dict(
        args=vars(args),
        device=str(jax.devices()[0].device_kind),
        backend=jax.default_backend(),
        rows=rows,
        speedup=paired,
    )
    print(
        f"{args.pair} {args.method} batch {args.batch} {args.dtype} on {args.devices} "
        f"{jax.default_backend()} device(s):"
    )
    for name, r in rows.items():
        print(f"  {name:>8s}: {r['ms_per_step']:8.1f} ms/step  {r['images_per_s']:8.1f} img/s")
    print(f"  job images/s / single run images/s (paired median): {paired:.2f}")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
