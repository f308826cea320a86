"""TAKD runner: teacher -> assistant -> student, KD at each hop (Mirzadeh et al. 2020).

python experiments/takd/run.py --pairs res32x4_res8x4,res56_res20 --seeds 0,1,2 \
    --root RUNS [--teachers DIR | --train-teachers] [--assistant NAME] [--print-only] \
    [--override num_epochs=240 ...]

Per pair and seed, in order (a run whose workdir has a summary.json is skipped, an
interrupted one resumes from its checkpoint):
  1. the teacher: DIR/<teacher>[.npz] (default ROOT/teachers), trained first by
     configs/cifar100_teacher.py:model=<teacher> with --train-teachers;
  2. the assistant, KD from the teacher: ROOT/<pair>/takd_assistant/seed<k>;
  3. the student, KD from that assistant's workdir: ROOT/<pair>/takd/seed<k>.
Both hops use the pair file's `method=kd` recipe (CE 0.1 + KD 0.9 at T 4, SGD 0.05).
Then: python experiments/table1_cifar100/collect.py --root RUNS (method "takd").
"""

import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from experiments.common import runs  # noqa: E402

# pair -> (config file, assistant). The assistants sit between teacher and student in depth
# at the student's width, as TAKD's (ResNet assistants of intermediate depth):
# resnet20x4 (4,333,700 parameters at 100 classes, between resnet32x4's 7,433,860 and
# resnet8x4's 1,233,540) and resnet32 (472,756, between resnet56's 861,620 and resnet20's
# 278,324).
PAIRS = {
    "res32x4_res8x4": ("configs/cifar100_res32x4_res8x4.py", "resnet20x4"),
    "res56_res20": ("configs/cifar100_res56_res20.py", "resnet32"),
}
# The models of each hop are set here; a user override of these keys only names them.
_HOP_KEYS = ("student.name", "teacher.name", "teacher.checkpoint")


def _last(overrides, key, default):
    values = [v for k, v in overrides if k == key]
    return values[-1] if values else default


def takd_runs(
    *,
    pairs,
    seeds,
    root: str,
    teachers_dir: str,
    overrides=(),
    assistant: str | None = None,
) -> list[runs.Run]:
    """The assistant and student runs of every (pair, seed), assistant first.

    Args:
      pairs: pair name -> (config file, assistant model), as PAIRS.
      seeds: one assistant and one student per seed (`--config.seed`).
      root: the study's root folder.
      teachers_dir: where the teachers are (`runs.teacher_path`).
      overrides: for both hops (last); `student.name` / `teacher.name` name the pair's
        student and teacher, `teacher.checkpoint` the teacher's checkpoint.
      assistant: the assistant model for every pair (default: the pair's).
    """
    shared = [(k, v) for k, v in overrides if k not in _HOP_KEYS]
    out = []
    for pair, (config_file, pair_assistant) in pairs.items():
        config = runs.load_config(f"{config_file}:method=kd")
        teacher = _last(overrides, "teacher.name", config.teacher.name)
        student = _last(overrides, "student.name", config.student.name)
        t_path = _last(overrides, "teacher.checkpoint", runs.teacher_path(teachers_dir, [teacher]))
        middle = assistant or pair_assistant
        for seed in seeds:
            a_dir = os.path.join(root, pair, "takd_assistant", f"seed{seed}")
            hops = [  # (workdir, student model, teacher model, teacher checkpoint)
                (a_dir, middle, teacher, t_path),
                (os.path.join(root, pair, "takd", f"seed{seed}"), student, middle, a_dir),
            ]
            for workdir, s_name, t_name, t_ckpt in hops:
                hop = [
                    ("seed", str(seed)),
                    ("student.name", s_name),
                    ("teacher.name", t_name),
                    ("teacher.checkpoint", t_ckpt),
                ]
                out.append(runs.Run(f"{config_file}:method=kd", workdir, tuple(hop + shared)))
    return out


def main(argv=None):
    """Parses the options and launches (or prints) the runs; returns their records."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", default="all", help=f"Comma-separated: {', '.join(PAIRS)}")
    parser.add_argument("--assistant", default=None, help="Assistant model for every pair.")
    runs.add_launch_args(parser, methods="kd")  # --methods is unused: both hops are KD
    args = parser.parse_args(argv)
    pairs = runs.select(PAIRS, args.pairs)
    overrides = runs.parse_overrides(args.override)
    teachers_dir = args.teachers or os.path.join(args.root, "teachers")
    plan = []
    if args.train_teachers:
        names = []
        for config_file, _ in pairs.values():
            config = runs.load_config(f"{config_file}:method=kd")
            name = _last(overrides, "teacher.name", config.teacher.name)
            if name not in names:
                names.append(name)
        teacher_overrides = runs.parse_overrides(args.teacher_override)
        plan += runs.teacher_runs(names, teachers_dir, overrides, teacher_overrides)
    plan += takd_runs(
        pairs=pairs,
        seeds=[int(s) for s in runs.parse_list(args.seeds)],
        root=args.root,
        teachers_dir=teachers_dir,
        overrides=overrides,
        assistant=args.assistant,
    )
    mode = "print" if args.print_only else "in_process" if args.in_process else "subprocess"
    return runs.launch(plan, mode=mode, nice=args.nice)


if __name__ == "__main__":
    main()
