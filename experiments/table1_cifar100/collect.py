"""Table 1 collector: best and last top-1 (mean ± std over seeds) beside the paper's numbers.

python experiments/table1_cifar100/collect.py --root ROOT [--out table.md] [--csv runs.csv]
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from experiments.common import results  # noqa: E402
from experiments.table1_cifar100 import study  # noqa: E402


def main(argv=None):
    """Prints (and optionally writes) the table; returns (runs, stats, table)."""
    return results.collect_main(
        argv,
        description=__doc__.split("\n")[0],
        fields={"best_top1": "best top-1", "last_top1": "last top-1"},
        paper=study.PAPER,
        groups=list(study.PAIRS),
        methods=list(study.ROWS),
    )


if __name__ == "__main__":
    main()
