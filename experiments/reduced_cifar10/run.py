"""Reduced-scale check on real images: KD vs LumiNet vs the student alone, 3 seeds, on CPU.

python experiments/reduced_cifar10/run.py --root /tmp/reduced --seeds 0,1,2 --epochs 8 \
    --teacher-epochs 15 [--methods vanilla,kd,luminet|all] [--dataset cifar10_sample] [--nice 19]

`--methods all` adds FitNet, AT, RKD, OFD, CRD, ReviewKD and DML (their settings:
experiments/reduced_cifar10/config.py; DML trains a resnet20 peer beside the student and
reads no teacher); every method shares the teacher, the schedule and the seeds.

Uses configs/quickstart.py (resnet20 teacher -> resnet8 students, the shipped CIFAR-10 sample:
3,000 train / 1,000 test JPEGs, batch 64, lr 0.05 decayed x0.1 at the last epoch, LumiNet
ce 2 / alpha 8 / T 4 with a 2-epoch ramp, KD 0.1 / 0.9 / T 4). The teacher is trained once
(seed 0) into ROOT/teachers/resnet20; students go to ROOT/res20_res8/<method>/seed<k>, run
seed by seed (all methods of seed 0 first) so that a cut-short run still gives paired seeds.
Then: collect.py --root ROOT, and the probe (figure4/transfer.py, see README.md).
"""

import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from experiments.common import runs  # noqa: E402

CONFIG = "configs/quickstart.py"
GROUP = "res20_res8"
TEACHER, STUDENT = "resnet20", "resnet8"
# The distiller settings of the committed results, pinned (configs/quickstart.py may change).
DISTILLERS = {
    "vanilla": {},
    "kd": dict(ce_weight=0.1, kd_weight=0.9, temperature=4.0),
    "dkd": dict(ce_weight=1.0, alpha=1.0, beta=2.0, temperature=4.0, warmup_epochs=2),
    "luminet": dict(ce_weight=2.0, alpha=8.0, temperature=4.0, warmup_epochs=2),
}
# The feature-based and DML rows: their own config file (pinned there; quickstart has none).
FEATURE_CONFIG = "experiments/reduced_cifar10/config.py"
FEATURE_METHODS = ("fitnet", "at", "rkd", "ofd", "crd", "reviewkd", "dml")
ALL_METHODS = ("vanilla", "kd", "luminet", *FEATURE_METHODS)
NO_TEACHER = ("vanilla", "dml")


def build_runs(
    root: str,
    *,
    methods: list[str],
    seeds: list[int],
    epochs: int,
    teacher_epochs: int,
    overrides: list[tuple[str, str]],
) -> list[runs.Run]:
    """The teacher run, then the students seed by seed (models and distillers pinned)."""
    teacher_dir = os.path.join(root, "teachers", TEACHER)
    teacher_overrides = (("seed", "0"), ("student.name", TEACHER), *overrides)
    out = [
        runs.Run(f"{CONFIG}:method=teacher,epochs={teacher_epochs}", teacher_dir, teacher_overrides)
    ]
    for seed in seeds:
        for method in methods:
            extra = [("seed", str(seed)), ("student.name", STUDENT)]
            if method not in NO_TEACHER:
                extra += [("teacher.name", TEACHER), ("teacher.checkpoint", teacher_dir)]
            extra += [(f"distiller.{k}", str(v)) for k, v in DISTILLERS.get(method, {}).items()]
            workdir = os.path.join(root, GROUP, method, f"seed{seed}")
            path = FEATURE_CONFIG if method in FEATURE_METHODS else CONFIG
            config = f"{path}:method={method},epochs={epochs}"
            out.append(runs.Run(config, workdir, (*extra, *overrides)))
    return out


def main(argv=None):
    """Parses the options and launches (or prints) the runs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--methods", default="vanilla,kd,luminet", help="Comma-separated, or all.")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--dataset", default="cifar10_sample", help="config dataset.name")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--print-only", action="store_true")
    parser.add_argument("--in-process", action="store_true")
    parser.add_argument("--nice", type=int, default=0)
    args = parser.parse_args(argv)
    overrides = [("dataset.name", args.dataset)] + runs.parse_overrides(args.override)
    todo = build_runs(
        args.root,
        methods=list(ALL_METHODS) if args.methods == "all" else runs.parse_list(args.methods),
        seeds=[int(s) for s in runs.parse_list(args.seeds)],
        epochs=args.epochs,
        teacher_epochs=args.teacher_epochs,
        overrides=overrides,
    )
    mode = "print" if args.print_only else "in_process" if args.in_process else "subprocess"
    return runs.launch(todo, mode=mode, nice=args.nice)


if __name__ == "__main__":
    main()
