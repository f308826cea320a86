"""Table 5 collector: best/last top-1 with AutoAugment (mean ± std over seeds).

python experiments/table5_autoaugment/collect.py --root ROOT [--out table.md] [--csv runs.csv]
The reference column is the paper's Table 1 number (standard augmentation).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from experiments.common import results  # noqa: E402
from experiments.table5_autoaugment import study  # noqa: E402


def main(argv=None):
    """Prints (and optionally writes) the table; returns (runs, stats, table)."""
    return results.collect_main(
        argv,
        description=__doc__.split("\n")[0],
        fields={"best_top1": "best top-1 (AutoAugment)", "last_top1": "last top-1"},
        paper=study.PAPER_STANDARD_AUG,
        paper_label="paper top-1, standard aug. (Table 1)",
        groups=list(study.PAIRS),
        methods=list(study.METHODS),
    )


if __name__ == "__main__":
    main()
