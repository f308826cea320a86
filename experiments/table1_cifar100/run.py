"""Table 1 runner: CIFAR-100 students for each pair x method x seed, one after the other.

python experiments/table1_cifar100/run.py --pairs res32x4_res8x4,vgg13_vgg8 \
    --methods vanilla,kd,dkd,luminet --seeds 0,1,2 --root /data/runs/table1 \
    [--teachers DIR | --train-teachers] [--print-only] [--override num_epochs=240 ...]

Workdirs: ROOT/<pair>/<method>/seed<k>. Teachers: DIR/<model>[.npz] (default ROOT/teachers),
e.g. mdistiller's checkpoints converted with `python -m luminet_jax.convert`, or trained
first with --train-teachers. Then: python experiments/table1_cifar100/collect.py --root ROOT.
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from experiments.common import runs  # noqa: E402
from experiments.table1_cifar100 import study  # noqa: E402


def main(argv=None):
    """Parses the options and launches (or prints) the runs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", default="all", help=f"Comma-separated: {', '.join(study.PAIRS)}")
    runs.add_launch_args(parser, methods=",".join(study.METHODS))
    args = parser.parse_args(argv)
    return runs.launch_from_args(args, runs.select(study.PAIRS, args.pairs))


if __name__ == "__main__":
    main()
