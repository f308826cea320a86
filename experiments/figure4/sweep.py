"""Figure 4 runner: the students of panel (a) and the sweeps of panels (b), (c), (d).

python experiments/figure4/sweep.py --panel PANEL --root ROOT [--pair wrn40_2_wrn16_2] \
    [--values ...] [--methods ...] [--seeds 0,1,2] [--teachers DIR | --train-teachers] \
    [--print-only] [--override k=v ...]

PANEL:
  students     (a) vanilla / KD / LumiNet students to probe:  ROOT/<pair>/<method>/seed<k>
  batch        (b) batch size 32..256 (--values 32,64,128,256): ROOT/<pair>/bs<B>/<method>/seed<k>
  temperature  (c) temperature 1..8 (--values 1,...,8):        ROOT/<pair>/T<t>/<method>/seed<k>
  ensemble     (d) teachers resnet8x4, wrn_40_2 and their logit average:
               ROOT/<pair>/teacher_<name|ensemble>/<method>/seed<k>
--config FILE sweeps another config file (e.g. configs/quickstart.py), --pair naming it.
The learning rate is left at the pair's recipe for every batch size. Then
`experiments/figure4/plot.py --root ROOT` draws (b)-(d); `transfer.py` probes (a).
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from experiments.common import runs  # noqa: E402
from experiments.table1_cifar100 import study as table1  # noqa: E402

PANELS = {  # panel -> (default values, default methods)
    "students": ("", "vanilla,kd,luminet"),
    "batch": ("32,64,128,256", "kd,luminet"),
    "temperature": ("1,2,3,4,5,6,7,8", "kd,luminet"),
    "ensemble": ("resnet8x4,wrn_40_2", "luminet"),
}


def variants(panel: str, values: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Variant folder -> overrides for one panel."""
    if panel == "students":
        return {"": []}
    if panel == "batch":
        return {f"bs{int(v)}": [("batch_size", str(int(v)))] for v in values}
    if panel == "temperature":
        return {f"T{float(v):g}": [("distiller.temperature", str(float(v)))] for v in values}
    if panel == "ensemble":  # each teacher alone, then the mean of their logits
        out = {f"teacher_{name}": [("teacher.name", name)] for name in values}
        out["teacher_ensemble"] = [("teacher.name", ",".join(values))]
        return out
    raise ValueError(f"Unknown panel {panel!r}; known: {', '.join(PANELS)}")


def main(argv=None):
    """Parses the options and launches (or prints) the runs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--panel", required=True, choices=list(PANELS))
    parser.add_argument("--pair", default="wrn40_2_wrn16_2", help="A Table 1 pair name.")
    parser.add_argument(
        "--config", default=None, help="Another config file (taking method=NAME); --pair names it."
    )
    parser.add_argument("--values", default=None, help="Comma-separated sweep values.")
    runs.add_launch_args(parser, methods="")
    args = parser.parse_args(argv)
    default_values, default_methods = PANELS[args.panel]
    values = runs.parse_list(args.values if args.values is not None else default_values)
    args.methods = args.methods or default_methods
    pairs = {args.pair: args.config} if args.config else runs.select(table1.PAIRS, args.pair)
    teachers = values if args.panel == "ensemble" else None
    return runs.launch_from_args(
        args, pairs, variants=variants(args.panel, values), teachers=teachers
    )


if __name__ == "__main__":
    main()
