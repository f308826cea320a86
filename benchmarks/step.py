"""Times the full distillation step (teacher forward, student forward/backward, SGD update).

    python benchmarks/step.py --pair resnet32x4:resnet8x4 --methods kd,luminet,dkd,vanilla \
        --batch 64 --dtype float32 --devices 1 --steps 20 [--fast-conv [pointwise|all|compare]] \
        [--framework jax|torch|both] [--torch-device auto|cpu|cuda] [--tf32 default|on|off] \
        [--throughput-steps 50] [--data] [--cache-dir auto|DIR|off] [--out results.json]

Each JAX step is `steps.make_train_step` jitted by `sharding.shard_train_step` on synthetic
data already on the devices. All variants (methods x frameworks x fast-conv settings) are
compiled first and then timed INTERLEAVED, one step of each per round, so every ratio
compares steps measured under the same machine load. Two measures: LATENCY (each step
waited for: JAX `block_until_ready`, CUDA synchronized; `ms_per_step`) and THROUGHPUT
(`--throughput-steps` N steps dispatched back to back with one wait at the end, in
`--throughput-rounds` interleaved rounds; `throughput_ms_per_step`), the steady state of a
training loop that does not wait for each step. Reported: median ms/step, images/s,
the ratio to the KD step of the same framework and setting, the JAX/PyTorch ratio, and the
extra learnable parameters a method adds (0 for the logit methods). With
`--framework both` on a GPU, JAX preallocates only XLA_PYTHON_CLIENT_MEM_FRACTION (0.45
unless set) of the card, so that PyTorch fits beside it. `--tf32` states float32 math:
"on" lets PyTorch's matmuls and cuDNN convolutions use TF32 (as JAX's default precision
does on GPUs since Ampere), "off" turns TF32 off in PyTorch and sets JAX's default matmul
precision to "highest", "default" leaves both frameworks' defaults; the results record the
flags either way. `--pair resnet34:resnet18` takes the ImageNet recipe's hyperparameters
(PAIR_HPARAMS). The feature-based
methods (fitnet, at, rkd, pkt, sp, vid, nst, kdsvd, ofd, reviewkd, crd; PyTorch steps for
fitnet, crd and reviewkd in torch_feature_step.py, the others JAX only) take the
resnet32x4 -> resnet8x4 recipe of configs/, and their extra params and state come from
`distiller.init` on the models' features of a dummy batch, as in the trainer. CRD is built
for 50,000 training samples: its batch carries random sample indices ("index") and its
sampler random labels of the 50,000 samples (`distiller.data_state`); "state_numbers" counts
its memories (2 x 50,000 x 128). DML (JAX only) trains the cohort of the student and a peer
of the teacher's architecture from scratch (no teacher forward); its extra params are the
peer's. `--data`
also times the input pipelines alone (device-resident CIFAR batches, and tf.data
decode+augment of JPEGs). Heavy imports (TensorFlow) happen only for `--data`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import timing  # noqa: E402
from benchmarks.timing import summarize, time_interleaved  # noqa: E402, F401 (their old home)


def recipe(config_name: str) -> dict[str, dict]:
    """A shipped config's method table, as get_distiller kwargs without the name: the
    benchmarks run the configs' recipes, not a copy of them (no ml_collections needed)."""
    from luminet_jax import cli  # noqa: PLC0415

    table = cli.load_config_module(config_name).METHODS
    return {name: {k: v for k, v in kw.items() if k != "name"} for name, kw in table.items()}


# The resnet32x4 -> resnet8x4 recipe (DESIGN.md section 3), and other pairs' where they
# differ from it (ImageNet's: configs/imagenet_r34_r18.py).
HPARAMS = recipe("cifar100_res32x4_res8x4")
PAIR_HPARAMS = {"resnet34:resnet18": recipe("imagenet_r34_r18")}
REVIEWKD_PAIR = ("resnet32x4:resnet8x4", 32)  # (pair, image size) of HPARAMS["reviewkd"]
# The feature methods with a PyTorch reference step (torch_feature_step.METHODS; pinned
# here so that this module imports without torch) and the JAX-only methods.
TORCH_FEATURE = frozenset({"fitnet", "crd", "reviewkd"})
JAX_ONLY = frozenset(HPARAMS) - TORCH_FEATURE - {"vanilla", "kd", "dkd", "luminet"}
NUM_TRAIN = 50_000  # CIFAR-100's training set: CRD's memories and sample indices


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pair", default="resnet32x4:resnet8x4", help="teacher:student")
    p.add_argument("--methods", default="kd,luminet,dkd,vanilla")
    p.add_argument("--batch", type=int, default=64, help="global batch")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--devices", type=int, default=1, help="devices on the data mesh")
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    p.add_argument(
        "--fast-conv",
        nargs="?",
        const="pointwise",
        default="off",
        choices=["off", "pointwise", "all", "compare"],
        help="luminet_jax.fast_conv scope for JAX (compare: off and pointwise side by side)",
    )
    p.add_argument("--framework", default="jax", choices=["jax", "torch", "both"])
    p.add_argument("--channels-last", action="store_true", help="PyTorch channels_last")
    p.add_argument(
        "--torch-device", default="auto", help="PyTorch device: auto (cuda if available), cpu, cuda"
    )
    p.add_argument("--tf32", default="default", choices=["default", "on", "off"])
    p.add_argument(
        "--throughput-steps", type=int, default=20, help="steps per throughput round (0: none)"
    )
    p.add_argument("--throughput-rounds", type=int, default=3)
    p.add_argument(
        "--cache-dir", default="auto", help="JAX's persistent compilation cache (auto|DIR|off)"
    )
    p.add_argument("--data", action="store_true", help="also time the input pipelines")
    p.add_argument("--data-batches", type=int, default=20)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def _setup_devices(n: int, *, share_with_torch: bool = False) -> None:
    """On CPU, expose `n` host devices; next to PyTorch on one GPU, let JAX preallocate less
    than its default 75% of the card (must run before jax and torch are imported)."""
    if share_with_torch:
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")
    # PyTorch's OpenMP threads spin at barriers by default; next to XLA's thread pool (or
    # any other load) on a small CPU that stalls its steps by up to ~1.7 s. Passive waiting
    # removed the stall (resnet8, batch 8: 1,759 -> 42 ms per step).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    flags = os.environ.get("XLA_FLAGS", "")
    if n > 1 and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def hparams_for(method: str, pair: str) -> dict:
    """The method's hyperparameters for `pair` (PAIR_HPARAMS where it has them)."""
    return dict(PAIR_HPARAMS.get(pair, {}).get(method, HPARAMS[method]))


def reviewkd_hparams(student, teacher, s_vars, t_vars, x, weight: float = 5.0) -> dict:
    """ReviewKD's channel and shape lists read off both models' features at `x`'s size
    (student stages 1..N then its pooled features; shapes deepest first, 1 = pooled), as
    torch_feature_step's ReviewKD reads them; for pairs or sizes without a pinned recipe."""
    import jax

    from luminet_jax import config_features

    def lists(model, variables):
        feats = jax.eval_shape(lambda v: model.apply(v, x, train=False)[1], variables)
        stages = sorted(k for k in feats if k.startswith("stage") and k[5:].isdigit())
        channels = tuple(feats[k].shape[-1] for k in stages) + (feats["pooled"].shape[-1],)
        return channels, (1,) + tuple(feats[k].shape[1] for k in reversed(stages))

    (s_ch, s_shapes), (t_ch, t_shapes) = lists(student, s_vars), lists(teacher, t_vars)
    kw = config_features.cifar_reviewkd(weight, s_ch, t_ch, shapes=s_shapes, out_shapes=t_shapes)
    return dict(HPARAMS["reviewkd"], **kw)


def init_distiller(distiller, student, teacher, s_vars, t_vars, x, *, num_train):
    """A distiller's extra params and state, made as the trainer makes them: `init` on both
    models' inference-mode features of a dummy batch at the run's image size ({} for the
    logit methods)."""
    import jax

    def init(s_vars, t_vars):
        _, s_feats = student.apply(s_vars, x, train=False)
        _, t_feats = teacher.apply(t_vars, x, train=False)
        return distiller.init(
            jax.random.key(2), s_feats, t_feats,
            teacher_variables=t_vars, num_train=num_train, teacher=teacher,
        )  # fmt: skip

    return jax.jit(init)(s_vars, t_vars)


def with_data_state(distiller, extra, *, num_classes, index, labels, seed=0):
    """`extra` with the per-sample training labels a distiller's sampler needs, as the
    trainer adds them (`distiller.data_state`; CRD), else unchanged. The labels are random
    over NUM_TRAIN samples, except that the batch's samples (`index`) have the batch's
    `labels`."""
    import numpy as np

    if not distiller.uses_train_labels:
        return extra
    train_labels = np.random.default_rng(seed).integers(0, num_classes, NUM_TRAIN)
    train_labels[np.asarray(index)] = np.asarray(labels)
    return dict(extra, state=distiller.data_state(extra["state"], train_labels))


def _memory_numbers(extra_state) -> int:
    """Floating-point numbers a distiller keeps in its state (CRD: its two memories)."""
    import jax
    import numpy as np

    leaves = jax.tree.leaves(extra_state)
    return int(sum(np.size(x) for x in leaves if np.issubdtype(np.asarray(x).dtype, np.floating)))


def build_jax_variants(args, methods, fast_modes):
    """{label: (run_one_step, info)} for every method x fast-conv mode, compiled."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from luminet_jax import fast_conv, models, optim, sharding, state, steps
    from luminet_jax.distillers import get_distiller

    teacher_name, student_name = args.pair.split(":")
    devices = jax.devices()[: args.devices]
    if len(devices) < args.devices:
        raise SystemExit(f"--devices {args.devices} but only {len(devices)} available")
    mesh = sharding.make_mesh(devices)
    sharding.check_global_batch(args.batch, mesh)
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else None  # None: float32 inputs
    kw = dict(num_classes=args.num_classes, dtype=dtype, axis_name=sharding.DATA_AXIS)
    student = models.get_model(student_name, **kw)
    teacher = models.get_model(teacher_name, **kw)

    rng = np.random.default_rng(0)
    shape = (args.batch, args.image_size, args.image_size, 3)
    host_batch = {
        "image": rng.normal(size=shape).astype(np.float32),
        "label": rng.integers(0, args.num_classes, args.batch).astype(np.int32),
    }
    # CRD's batches also carry their sample indices, uniform over the training set.
    index = rng.integers(0, NUM_TRAIN, args.batch).astype(np.int32)
    put = lambda b: jax.device_put(b, sharding.batch_sharding(mesh))
    batches = {False: put(host_batch), True: put(dict(host_batch, index=index))}
    x = jnp.zeros((2,) + shape[1:], jnp.float32)
    # Models are built for the sharded step (axis_name); init unsharded copies.
    init_kw = dict(num_classes=args.num_classes, dtype=dtype)
    init_vars = lambda name, key, **peers: jax.jit(
        lambda k: models.get_model(name, **init_kw, **peers).init(k, x, train=False)
    )(key)
    s_vars = init_vars(student_name, jax.random.key(0))
    cohort_vars = {}  # DML's cohort (student + peer), built on first use
    t_vars = jax.jit(lambda k: models.get_model(teacher_name, **init_kw).init(k, x, train=False))(
        jax.random.key(1)
    )
    replicated = sharding.replicated(mesh)
    t_vars = jax.device_put(t_vars, replicated)
    tx = optim.make_optimizer(learning_rate=0.05, momentum=0.9, weight_decay=5e-4)
    count = lambda tree: int(sum(np.size(leaf) for leaf in jax.tree.leaves(tree)))

    variants = {}
    for fast in fast_modes:
        for method in methods:
            hparams = hparams_for(method, args.pair)
            if method == "reviewkd" and (args.pair, args.image_size) != REVIEWKD_PAIR:
                hparams = reviewkd_hparams(student, teacher, s_vars, t_vars, x)
            distiller = get_distiller(method, **hparams)
            m_student, m_vars = student, s_vars
            if method == "dml":  # the cohort: the student and its peer, the teacher's model
                m_student = models.get_model(student_name, peers=teacher_name, **kw)
                if not cohort_vars:
                    cohort_vars.update(
                        init_vars(student_name, jax.random.key(0), peers=teacher_name)
                    )
                m_vars = cohort_vars
            step = steps.make_train_step(
                m_student, teacher, distiller, tx, steps_per_epoch=782, axis_name=sharding.DATA_AXIS
            )
            step = fast_conv.wrap(
                step, enabled=fast != "off", scope=fast if fast != "off" else "pointwise"
            )
            # A fresh host copy per variant: the step donates its state's buffers.
            extra = init_distiller(
                distiller, m_student, teacher, m_vars, t_vars, x, num_train=NUM_TRAIN
            )
            extra = with_data_state(
                distiller, extra, num_classes=args.num_classes, index=index,
                labels=host_batch["label"],
            )  # fmt: skip
            # Sample indices in the batch only where the distiller reads them (CRD).
            batch = batches[distiller.uses_train_labels]
            host_state = jax.tree.map(np.asarray, state.create_train_state(m_vars, tx, extra))
            train_state = jax.device_put(host_state, replicated)
            t0 = time.perf_counter()
            compiled = (
                sharding.shard_train_step(step, mesh).lower(train_state, t_vars, batch).compile()
            )
            compile_s = time.perf_counter() - t0
            holder = {"state": train_state}

            def run(sync=True, compiled=compiled, holder=holder, batch=batch):
                holder["state"], metrics = compiled(holder["state"], t_vars, batch)
                if sync:
                    jax.block_until_ready(metrics)
                return metrics

            info = {
                "framework": "jax",
                "method": method,
                "fast_conv": fast,
                "compile_s": compile_s,
                "student_params": count(s_vars["params"]),
                # Learnable parameters beyond the student: the distiller's, or DML's peer.
                "extra_params": count(train_state.extra_params)
                + count(m_vars["params"])
                - count(s_vars["params"]),
                "state_numbers": _memory_numbers(train_state.extra_state),
            }
            label = f"jax/{method}" + ("" if fast == "off" else f"/fast_conv={fast}")
            variants[label] = (run, info)
    return variants


def set_precision(tf32: str, frameworks: set[str]) -> dict:
    """Applies `--tf32` and returns the float32 math flags of both frameworks."""
    import jax

    flags = {"tf32": tf32}
    if tf32 == "off" and "jax" in frameworks:
        jax.config.update("jax_default_matmul_precision", "highest")
    # None = XLA's DEFAULT: on GPUs since Ampere float32 dots and convolutions use TF32.
    flags["jax_default_matmul_precision"] = jax.config.jax_default_matmul_precision
    if "torch" in frameworks:
        import torch

        from benchmarks import torch_step

        if tf32 != "default":
            torch.backends.cuda.matmul.allow_tf32 = tf32 == "on"
            torch.backends.cudnn.allow_tf32 = tf32 == "on"
        flags.update(torch_step.tf32_flags())
    return flags


def main(argv=None) -> dict:
    args = parse_args(argv)
    _setup_devices(args.devices, share_with_torch=args.framework == "both")
    if args.framework == "torch":  # JAX only reads its config here: keep it off the GPU
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(HPARAMS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {sorted(HPARAMS)}")
    jax_only = sorted(set(methods) & JAX_ONLY)
    if jax_only and args.framework != "jax":
        raise SystemExit(f"no PyTorch reference step for {jax_only}: use --framework jax")
    from luminet_jax import launch

    cache_dir = launch.enable_compilation_cache(args.cache_dir)
    frameworks = {"jax", "torch"} if args.framework == "both" else {args.framework}
    precision = set_precision(args.tf32, frameworks)
    variants = {}
    if args.framework in ("jax", "both"):
        modes = ["off", "pointwise"] if args.fast_conv == "compare" else [args.fast_conv]
        variants.update(build_jax_variants(args, methods, modes))
    if args.framework in ("torch", "both"):
        from benchmarks import torch_step

        variants.update(torch_step.build_variants(args, methods, hparams_for))

    import jax

    times = timing.time_interleaved(variants, steps=args.steps, warmup=args.warmup)
    throughput = timing.time_throughput(
        variants, steps=args.throughput_steps, rounds=args.throughput_rounds
    )
    rows = timing.summarize(variants, times, args.batch, throughput)
    platform, kind = jax.devices()[0].platform, jax.devices()[0].device_kind
    if args.framework == "torch":
        from benchmarks import torch_step

        platform = kind = torch_step.torch_device(args.torch_device)
        if platform.startswith("cuda"):
            import torch

            kind = torch.cuda.get_device_name(torch.device(platform))
    header = (
        f"pair {args.pair}  batch {args.batch}  dtype {args.dtype}  devices {args.devices} "
        f"({platform}: {kind})  steps {args.steps} (+{args.warmup} warmup)"
        f"  throughput {args.throughput_rounds} x {args.throughput_steps} steps"
        f"  cpu_count {os.cpu_count()}"
    )
    print(header)
    timing.print_table(rows)
    result = {
        "config": vars(args),
        "header": header,
        "platform": platform,  # JAX's (PyTorch's with --framework torch)
        "device_kind": kind,
        "precision": precision,
        "compile_cache": cache_dir,
        "steps": rows,
        "times_s": times,
        "throughput_times_s": throughput,
    }
    if args.data:
        from benchmarks import data_bench

        result["data"] = data_bench.time_data(args, root=ROOT)
        for d in result["data"]:
            print(f"[data] {d['pipeline']}: {d['images_per_s']:.0f} images/s")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
