"""Table 4 runner: a Faster R-CNN student distilled on RoI logits (vanilla, KD, DKD, LumiNet).

python experiments/table4_detection/run.py --pairs tiny_boxes --methods vanilla,kd,dkd,luminet \
    --seeds 0,1 --root RUNS --train-teachers [--config-arg steps=2000] [--print-only]

`--config-arg` is passed to the pair's config files (teacher's too), e.g. `steps=S` for the
Tiny-ImageNet boxes config, whose schedule (warmup, decays, evals) follows S.

Workdirs: ROOT/<pair>/<method>/seed<k>; the teacher (with --train-teachers, its pair's teacher
config) in TEACHERS/<pair> (default ROOT/teachers), given to the students as
teacher.checkpoint; or pass --override teacher.checkpoint=model_final_f6e8b1.pkl (detectron2's
R-101-FPN) for COCO. Then experiments/table4_detection/collect.py --root ROOT.
"""

import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from experiments.common import runs  # noqa: E402
from experiments.table4_detection import study  # noqa: E402


def build_runs(args) -> list[runs.Run]:
    """Teacher runs (with --train-teachers) then one student run per (pair, method, seed)."""
    overrides = runs.parse_overrides(args.override)
    teachers_dir = args.teachers or os.path.join(args.root, "teachers")
    # Step counts and data are shared with the teacher; the rest describes the student only.
    shared = [
        (k, v) for k, v in overrides if not k.startswith(("student.", "teacher.", "distiller."))
    ]
    chosen = runs.select({p: f for p, (f, _) in study.PAIRS.items()}, args.pairs)
    found = []
    for pair in chosen:
        student_config, teacher_config = study.PAIRS[pair]
        if args.config_arg:
            student_config += f":{args.config_arg}"
            teacher_config += f"{',' if ':' in teacher_config else ':'}{args.config_arg}"
        teacher_dir = os.path.join(teachers_dir, pair)
        if args.train_teachers:
            found.append(runs.Run(teacher_config, teacher_dir, tuple(shared)))
        pair_overrides = list(overrides)
        if not any(k == "teacher.checkpoint" for k, _ in overrides):
            pair_overrides.insert(0, ("teacher.checkpoint", teacher_dir))
        found += runs.pair_runs(
            pairs={pair: student_config},
            methods=runs.parse_list(args.methods),
            seeds=[int(s) for s in runs.parse_list(args.seeds)],
            root=args.root,
            overrides=pair_overrides,
        )
    return found


def main(argv=None):
    """Parses the options and launches (or prints) the runs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--pairs", default="tiny_boxes", help=f"Comma-separated: {', '.join(study.PAIRS)}"
    )
    parser.add_argument("--config-arg", default="", help="Extra config arguments, e.g. steps=600.")
    runs.add_launch_args(parser, methods=",".join(study.METHODS), seeds="0,1")
    args = parser.parse_args(argv)
    mode = "print" if args.print_only else "in_process" if args.in_process else "subprocess"
    return runs.launch(build_runs(args), mode=mode, nice=args.nice)


if __name__ == "__main__":
    main()
