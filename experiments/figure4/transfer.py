"""Figure 4a: transferability of distilled students' features (linear probe on Tiny-ImageNet).

python experiments/figure4/transfer.py --root ROOT --group wrn40_2_wrn16_2 --model wrn_16_2 \
    --num-classes 100 --methods vanilla,kd,luminet --data-dir TINY_DIR \
    --out-dir experiments/figure4/results [--norm cifar100] [--epochs 30]

Takes each student workdir ROOT/<group>/<method>/seed<k> (its latest checkpoint), freezes it,
extracts globally pooled features of the Tiny-ImageNet train and val images (resized to the
student's input size, normalized with the statistics the student was trained with), fits a
linear softmax probe on the train features and reports val top-1 / top-5 (mean ± std over
the students' seeds). TINY_DIR holds `tiny-imagenet-200/` or the zip (dataset "tiny_imagenet",
prepared with TFDS on first use); `--dataset image_folder:PATH` probes any image folder.
Writes transfer.json, transfer.md and transfer.png (bars) to --out-dir.
"""

from __future__ import annotations

import argparse
import glob
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments.common import plots, results  # noqa: E402
from experiments.figure4 import probe  # noqa: E402
from luminet_jax import checkpoint, models  # noqa: E402
from luminet_jax.data import augment  # noqa: E402

NORMS = {
    "cifar100": (augment.CIFAR100_MEAN, augment.CIFAR100_STD),
    "cifar10": (augment.CIFAR10_MEAN, augment.CIFAR10_STD),
    "imagenet": (augment.IMAGENET_MEAN, augment.IMAGENET_STD),
}
LABELS = {"vanilla": "student alone", "kd": "KD", "dkd": "DKD", "luminet": "LumiNet"}


def find_workdirs(root: str, group: str, methods: list[str]) -> dict[str, list[str]]:
    """method -> its seed workdirs ROOT/<group>/<method>/seed<k> that hold a checkpoint."""
    found = {}
    for method in methods:
        dirs = sorted(glob.glob(os.path.join(root, group, method, "seed*")))
        dirs = [d for d in dirs if os.path.isdir(os.path.join(d, checkpoint.CKPT_SUBDIR))]
        if dirs:
            found[method] = dirs
    return found


def transfer(
    workdirs: dict[str, list[str]],
    *,
    model_name: str,
    num_classes: int,
    train: tuple[np.ndarray, np.ndarray],
    evaluation: tuple[np.ndarray, np.ndarray],
    norm: tuple,
    probe_kwargs: dict,
    random_init: bool = False,
    log=print,
) -> dict:
    """Probes every workdir's frozen features; returns per-run and per-method results.

    Args:
      workdirs: method -> workdirs of students `model_name` with `num_classes` outputs.
      train, evaluation: (uint8 images, labels) of the probe dataset.
      norm: (mean, std) the students were trained with.
      probe_kwargs: passed to `probe.train_linear_probe` (epochs, learning_rate, ...).
      random_init: also probe an untrained network (seed 0): the floor.
    """
    model = models.get_model(model_name, num_classes=num_classes)
    size = models.input_size(model_name)
    probe_classes = int(max(train[1].max(), evaluation[1].max())) + 1
    sources = [(m, d) for m, dirs in workdirs.items() for d in dirs]
    if random_init:
        dummy = np.zeros((1, size, size, 3), np.float32)
        sources.insert(0, ("random init", model.init(jax.random.key(0), dummy, train=False)))
    runs = []
    for method, source in sources:
        start = time.time()
        if isinstance(source, str):
            variables = checkpoint.load_teacher(source, model_name, num_classes=num_classes)
        else:
            variables = {"params": source["params"], "batch_stats": source.get("batch_stats", {})}
        kwargs = dict(size=size, mean=norm[0], std=norm[1])
        f_train = probe.extract_features(model, variables, train[0], **kwargs)
        f_eval = probe.extract_features(model, variables, evaluation[0], **kwargs)
        head = probe.train_linear_probe(
            f_train, train[1], num_classes=probe_classes, **probe_kwargs
        )
        run = {
            "method": method,
            "workdir": source if isinstance(source, str) else "",
            "top1": probe.probe_accuracy(head, f_eval, evaluation[1], k=1),
            "top5": probe.probe_accuracy(head, f_eval, evaluation[1], k=5),
            "train_top1": probe.probe_accuracy(head, f_train, train[1], k=1),
            "feature_dim": int(f_train.shape[1]),
            "seconds": time.time() - start,
        }
        log(
            f"{method:12s} {run['workdir']}: probe top-1 {100 * run['top1']:.2f} "
            f"top-5 {100 * run['top5']:.2f} ({run['seconds']:.0f} s)"
        )
        runs.append(run)
    summary = {}
    for run in runs:
        summary.setdefault(run["method"], []).append(run)
    aggregated = {
        method: {
            "n": len(method_runs),
            "top1": results.mean_std([m["top1"] for m in method_runs]),
            "top5": results.mean_std([m["top5"] for m in method_runs]),
        }
        for method, method_runs in summary.items()
    }
    return {"runs": runs, "methods": aggregated}


def markdown(aggregated: dict) -> str:
    """The probe table: method, students (seeds), top-1 and top-5 (mean ± std, %)."""
    lines = ["| features | students | probe top-1 | probe top-5 |", "|---|---|---|---|"]
    for method, row in aggregated.items():
        lines.append(
            f"| {LABELS.get(method, method)} | {row['n']} | "
            f"{results.percent(*row['top1'])} | {results.percent(*row['top5'])} |"
        )
    return "\n".join(lines)


def plot(aggregated: dict, path: str, title: str) -> str:
    """Bars of probe top-1 (%) per feature source, ± std over students."""
    names = list(aggregated)
    return plots.bar_plot(
        [LABELS.get(m, m) for m in names],
        [100 * aggregated[m]["top1"][0] for m in names],
        [100 * aggregated[m]["top1"][1] for m in names],
        ylabel="linear-probe top-1 (%)",
        title=title,
        path=path,
    )


def main(argv=None):
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--group", default="wrn40_2_wrn16_2", help="ROOT/<group>/<method>/seed*")
    parser.add_argument("--model", default="wrn_16_2")
    parser.add_argument("--num-classes", type=int, default=100, help="The students' classes.")
    parser.add_argument("--methods", default="vanilla,kd,luminet")
    parser.add_argument("--dataset", default="tiny_imagenet")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--norm", default="cifar100", choices=sorted(NORMS))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--random-init", action="store_true", help="Also probe an untrained net.")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--title", default="Transfer to Tiny-ImageNet (linear probe)")
    args = parser.parse_args(argv)

    from luminet_jax import cli  # noqa: PLC0415
    from luminet_jax.data import input_pipeline  # noqa: PLC0415  (imports TensorFlow)

    cli.quiet_logs()  # before TensorFlow's import: its start-up banners

    workdirs = find_workdirs(args.root, args.group, [m for m in args.methods.split(",") if m])
    if not workdirs and not args.random_init:
        raise SystemExit(f"No student checkpoints under {args.root}/{args.group}/<method>/seed*")
    start = time.time()
    train = input_pipeline.load_arrays(args.dataset, "train", data_dir=args.data_dir)
    evaluation = input_pipeline.load_arrays(args.dataset, "eval", data_dir=args.data_dir)
    print(
        f"{args.dataset}: {len(train[1])} train / {len(evaluation[1])} eval images "
        f"{train[0].shape[1:]} ({time.time() - start:.0f} s to load)"
    )
    out = transfer(
        workdirs,
        model_name=args.model,
        num_classes=args.num_classes,
        train=train,
        evaluation=evaluation,
        norm=NORMS[args.norm],
        probe_kwargs=dict(
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            weight_decay=args.weight_decay,
        ),
        random_init=args.random_init,
    )
    out["config"] = {k: v for k, v in vars(args).items()}
    out["config"]["num_train"], out["config"]["num_eval"] = len(train[1]), len(evaluation[1])
    table = markdown(out["methods"])
    results.write_table(table, os.path.join(args.out_dir, "transfer.md"))
    results.write_json(out, os.path.join(args.out_dir, "transfer.json"))
    plot(out["methods"], os.path.join(args.out_dir, "transfer.png"), args.title)
    print(f"total {time.time() - start:.0f} s")
    return out


if __name__ == "__main__":
    main()
