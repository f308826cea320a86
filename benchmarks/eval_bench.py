"""Time per evaluation on the quickstart: host-normalized batches uploaded at every eval
(before) vs the eval split normalized once and kept on the devices (`device_data.EvalData`).

    python benchmarks/eval_bench.py [--config quickstart:teacher] [--repeats 10]

Builds the config's classification task (device-resident data), then times its evaluation
of the initial state both ways, interleaved, and prints the medians and their ratio. Both
ways run the same compiled eval step over the same padded batches.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from luminet_jax import cli, evaluation, models, sharding, steps, tasks  # noqa: E402
from luminet_jax.data import device_data, sources  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="quickstart:teacher")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    cli.quiet_logs()
    name, _, arg = args.config.partition(":")
    config = cli.load_config_module(name).get_config(arg or None)
    mesh = sharding.make_mesh()
    task = tasks.build(config, mesh=mesh)
    state = jax.jit(task.init)(jnp.uint32(config.seed), task.teacher_variables)
    ds = config.dataset
    info = sources.get_source(ds.name, ds.data_dir or None).info
    images, labels = sources.load_arrays(ds.name, info.eval_split, ds.data_dir or None)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    model = models.get_model(
        **config.student, num_classes=info.num_classes, axis_name=sharding.DATA_AXIS
    )
    eval_step = sharding.shard_eval_step(
        steps.make_eval_step(model, axis_name=sharding.DATA_AXIS), mesh
    )

    def before():  # today's path until issue 21: normalize in NumPy, upload every eval
        batches = device_data.eval_batches(
            images, labels, config.eval_batch_size, mean=info.mean, std=info.std
        )
        return evaluation.evaluate(
            eval_step, variables, (sharding.to_global(b, mesh) for b in batches)
        )

    kept = device_data.EvalData(
        images, labels, mesh=mesh, global_batch=config.eval_batch_size, mean=info.mean,
        std=info.std,
    )  # fmt: skip

    def after():
        return evaluation.evaluate(eval_step, variables, kept.batches())

    assert before()["top1"] == after()["top1"]  # compiled, and the same result
    times = {"before": [], "after": []}
    for _ in range(args.repeats):
        for label, fn in (("before", before), ("after", after)):
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    b, a = statistics.median(times["before"]), statistics.median(times["after"])
    print(f"{len(labels)} eval images, {kept.num_batches} batches of {config.eval_batch_size}")
    print(f"per eval: before {b * 1000:.0f} ms, after {a * 1000:.0f} ms, ratio {b / a:.2f}x")


if __name__ == "__main__":
    main()
