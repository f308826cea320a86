"""Table 1: the CIFAR-100 pairs (config files) and the published top-1 numbers."""

from luminet_jax import config_features, config_lib

# The LumiNet rows, then the feature-based baselines of the paper's comparison (every pair's
# config defines them; values in luminet_jax/config_features.py and the pair files).
LOGIT_METHODS = config_lib.PAPER_LOGIT_METHODS
FEATURE_METHODS = (*config_features.FEATURE_METHODS, "reviewkd")
METHODS = LOGIT_METHODS  # what run.py launches by default (--methods picks others)
ROWS = LOGIT_METHODS + FEATURE_METHODS  # the collected table's row order

# Pair name -> config file (each takes `method=NAME`).
PAIRS = {
    "res56_res20": "configs/cifar100_res56_res20.py",
    "res110_res32": "configs/cifar100_res110_res32.py",
    "res32x4_res8x4": "configs/cifar100_res32x4_res8x4.py",
    "wrn40_2_wrn16_2": "configs/cifar100_wrn40_2_wrn16_2.py",
    "wrn40_2_wrn40_1": "configs/cifar100_wrn40_2_wrn40_1.py",
    "vgg13_vgg8": "configs/cifar100_vgg13_vgg8.py",
    "res32x4_shv1": "configs/cifar100_res32x4_shv1.py",
    "wrn40_2_shv1": "configs/cifar100_wrn40_2_shv1.py",
    "vgg13_mv2": "configs/cifar100_vgg13_mv2.py",
    "res50_mv2": "configs/cifar100_res50_mv2.py",
    "res32x4_shv2": "configs/cifar100_res32x4_shv2.py",
}

# Best test top-1 (%), mean of runs. LumiNet: the LumiNet paper (DESIGN.md section 3).
# vanilla (student alone), KD and DKD: as reported in the DKD paper (Zhao et al. 2022), the
# numbers the LumiNet paper compares against (also in each config file's docstring).
_PUBLISHED = {  # pair: (vanilla, kd, dkd, luminet)
    "res56_res20": (69.06, 70.66, 71.97, 72.29),
    "res110_res32": (71.14, 73.08, 74.11, 74.20),
    "res32x4_res8x4": (72.50, 73.33, 76.32, 77.50),
    "wrn40_2_wrn16_2": (73.26, 74.92, 76.24, 76.38),
    "wrn40_2_wrn40_1": (71.98, 73.54, 74.81, 75.12),
    "vgg13_vgg8": (70.36, 72.98, 74.68, 74.94),
    "res32x4_shv1": (70.50, 74.07, 76.45, 76.66),
    "wrn40_2_shv1": (70.50, 74.83, 76.70, 76.95),
    "vgg13_mv2": (64.60, 67.37, 69.71, 70.50),
    "res50_mv2": (64.60, 67.35, 70.35, 70.97),
    "res32x4_shv2": (71.82, 74.45, 77.07, 77.55),
}
# Feature-based rows quoted in the LumiNet paper's Table 1 (from the DKD paper), for the two
# pairs where every method has a published number; the other cells stay empty.
_PUBLISHED_FEATURES = {  # method: (res32x4_res8x4, res56_res20)
    "fitnet": (73.50, 69.21),
    "at": (73.44, 70.55),
    "rkd": (71.90, 69.61),
    "ofd": (74.95, 70.98),
    "reviewkd": (75.63, 71.89),
}
PAPER = {
    (pair, method): value
    for pair, values in _PUBLISHED.items()
    for method, value in zip(LOGIT_METHODS, values)
}
PAPER.update(
    {
        (pair, method): value
        for method, values in _PUBLISHED_FEATURES.items()
        for pair, value in zip(("res32x4_res8x4", "res56_res20"), values)
    }
)
