"""Table 2: the ImageNet pairs (config files) and the published top-1 / top-5 numbers."""

# The LumiNet rows, then the feature-based baselines of the paper's Table 2 (both pairs'
# configs define them, with mdistiller's per-method batch and lr).
LOGIT_METHODS = ("vanilla", "kd", "dkd", "luminet")
FEATURE_METHODS = ("at", "ofd", "reviewkd")
METHODS = LOGIT_METHODS  # what run.py launches by default (--methods picks others)
ROWS = LOGIT_METHODS + FEATURE_METHODS  # the collected table's row order

PAIRS = {
    "r34_r18": "configs/imagenet_r34_r18.py",
    "r50_mv1": "configs/imagenet_r50_mv1.py",
}

# (top-1, top-5) in %. LumiNet: the LumiNet paper (DESIGN.md section 3; top-5 not recorded
# there, and 72.16 top-1 for r34->r18 in the later TMLR version). vanilla (student alone),
# KD, DKD: as reported in the DKD paper (Zhao et al. 2022), which the LumiNet paper cites.
_PUBLISHED = {
    "r34_r18": {
        "vanilla": (69.75, 89.07),
        "kd": (70.66, 89.88),
        "dkd": (71.70, 90.41),
        "luminet": (71.78, None),
    },
    "r50_mv1": {
        "vanilla": (68.87, 88.76),
        "kd": (68.58, 88.98),
        "dkd": (72.05, 91.05),
        "luminet": (72.55, None),
    },
}
PAPER = {
    (pair, method): f"{top1:.2f} / {'-' if top5 is None else f'{top5:.2f}'}"
    for pair, table in _PUBLISHED.items()
    for method, (top1, top5) in table.items()
}
