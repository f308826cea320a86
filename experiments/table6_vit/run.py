"""Table 6 runner: deit_small -> vit_compact on CIFAR-100 with KD and LumiNet.

python experiments/table6_vit/run.py --root /data/runs/table6 [--methods kd,luminet] \
    [--seeds 0,1,2] [--teachers DIR | --train-teachers] [--print-only] [--override k=v ...]

The teacher (deit_small, patch 4, 32x32) is ROOT/teachers/deit_small (or DIR/deit_small): a
workdir of `configs/cifar100_teacher.py:deit_small` with student.patch_size=4, which
--train-teachers runs first. Workdirs: ROOT/deits_vitc/<method>/seed<k>.
Then: python experiments/table6_vit/collect.py --root ROOT.
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from experiments.common import runs  # noqa: E402
from experiments.table6_vit import study  # noqa: E402


def main(argv=None):
    """Parses the options and launches (or prints) the runs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    runs.add_launch_args(parser, methods=",".join(study.METHODS))
    args = parser.parse_args(argv)
    args.teacher_override = [f"{k}={v}" for k, v in study.TEACHER_OVERRIDES] + list(
        args.teacher_override
    )
    return runs.launch_from_args(args, study.PAIRS)


if __name__ == "__main__":
    main()
