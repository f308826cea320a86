"""Table 2 runner: ImageNet students (resnet34 -> resnet18, resnet50 -> mobilenet_v1).

python experiments/table2_imagenet/run.py --pairs r34_r18,r50_mv1 \
    --methods vanilla,kd,dkd,luminet --seeds 0 --root /data/runs/table2 \
    --teachers /data/teachers --override dataset.data_dir=/data/tfds [--print-only]

Teachers: torchvision's pretrained resnet34 / resnet50, converted once with
`python -m luminet_jax.convert --model resnet34 --torch resnet34.pth --out DIR/resnet34`.
Workdirs: ROOT/<pair>/<method>/seed<k>. Then experiments/table2_imagenet/collect.py --root ROOT.
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from experiments.common import runs  # noqa: E402
from experiments.table2_imagenet import study  # noqa: E402


def main(argv=None):
    """Parses the options and launches (or prints) the runs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", default="all", help=f"Comma-separated: {', '.join(study.PAIRS)}")
    runs.add_launch_args(parser, methods=",".join(study.METHODS), seeds="0")
    args = parser.parse_args(argv)
    if args.train_teachers:
        parser.error("ImageNet teachers are torchvision's pretrained weights: convert them.")
    return runs.launch_from_args(args, runs.select(study.PAIRS, args.pairs))


if __name__ == "__main__":
    main()
