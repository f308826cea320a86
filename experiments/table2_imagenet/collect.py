"""Table 2 collector: best/last top-1 and top-5 (mean ± std over seeds) beside the paper.

python experiments/table2_imagenet/collect.py --root ROOT [--out table.md] [--csv runs.csv]
Top-5 is taken at the eval with the best top-1.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from experiments.common import results  # noqa: E402
from experiments.table2_imagenet import study  # noqa: E402


def main(argv=None):
    """Prints (and optionally writes) the table; returns (runs, stats, table)."""
    return results.collect_main(
        argv,
        description=__doc__.split("\n")[0],
        fields={
            "best_top1": "best top-1",
            "top5_at_best": "top-5 (at best)",
            "last_top1": "last top-1",
            "last_top5": "last top-5",
        },
        paper=study.PAPER,
        paper_label="paper top-1 / top-5",
        groups=list(study.PAIRS),
        methods=list(study.ROWS),
    )


if __name__ == "__main__":
    main()
