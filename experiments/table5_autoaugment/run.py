"""Table 5 runner: CIFAR-100 students trained with AutoAugment (dataset.augment=autoaugment).

python experiments/table5_autoaugment/run.py --root /data/runs/table5 \
    [--pairs res56_res20,res110_res32,res32x4_res8x4,wrn40_2_wrn40_1,vgg13_vgg8] \
    [--methods vanilla,kd,dkd,luminet] [--seeds 0,1,2] [--teachers DIR] [--print-only]

Same recipe and teachers as Table 1; only the train augmentation changes (pad 4 + crop + flip,
then the AutoAugment CIFAR-10 policy; luminet_jax/data/autoaugment.py). Workdirs:
ROOT/<pair>/<method>/seed<k>. Then experiments/table5_autoaugment/collect.py --root ROOT.
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from experiments.common import runs  # noqa: E402
from experiments.table5_autoaugment import study  # noqa: E402


def main(argv=None):
    """Parses the options and launches (or prints) the runs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--pairs", default=",".join(study.DEFAULT_PAIRS), help=f"Any of: {', '.join(study.PAIRS)}"
    )
    runs.add_launch_args(parser, methods=",".join(study.METHODS))
    args = parser.parse_args(argv)
    return runs.launch_from_args(
        args, runs.select(study.PAIRS, args.pairs), extra_overrides=study.OVERRIDES
    )


if __name__ == "__main__":
    main()
