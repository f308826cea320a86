"""wrn_40_2 -> wrn_40_1 on CIFAR-100 (DESIGN.md section 3).

Methods: vanilla, kd, dkd, luminet (default), kd_ls, dkd_ls, and the feature-based
fitnet, at, rkd, pkt, sp, vid, nst, kdsvd, ofd, reviewkd. Teacher: mdistiller's
cifar_teachers/wrn_40_2_vanilla checkpoint (top-1 75.61), by default
`zoo:wrn_40_2` (fetched, checked and converted once by the teacher zoo: luminet-teachers), or
an earlier `configs/cifar100_teacher.py:wrn_40_2` workdir (--config.teacher.checkpoint=W).

python -m luminet_jax.main --config configs/cifar100_wrn40_2_wrn40_1.py:method=luminet --workdir W

Expected best test top-1 of the student after 240 epochs (papers, mean of runs):
LumiNet 75.12; KD 73.54; DKD 74.81; vanilla 71.98 (KD/DKD/vanilla as reported in the DKD paper).
"""

from luminet_jax import config_features
from luminet_jax import config_lib as common

# From the LumiNet reference configs.
METHODS = common.cifar_methods(
    luminet=dict(ce_weight=1.0, alpha=75.0, temperature=8.0), dkd_beta=6.0
)

# Feature-based baselines: mdistiller's hyperparameters (luminet_jax/config_features.py).
# ReviewKD: the weight of its authors' CIFAR-100 script (reviewKD.sh) and the
# channel and shape lists of their build_review_kd.
METHODS.update(
    config_features.feature_methods(
        reviewkd=config_features.cifar_reviewkd(5.0, (16, 32, 64, 64), (32, 64, 128, 128))
    )
)


def get_config(arg=None):
    """`arg`: `method=NAME` or a bare NAME (default luminet)."""
    return common.cifar100_pair(
        arg, teacher="wrn_40_2", student="wrn_40_1", methods=METHODS, base_lr=0.05
    )
