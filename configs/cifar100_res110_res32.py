"""resnet110 -> resnet32 on CIFAR-100 (DESIGN.md section 3).

Methods: vanilla, kd, dkd, luminet (default), kd_ls, dkd_ls, and the feature-based
fitnet, at, rkd, pkt, sp, vid, nst, kdsvd, ofd, reviewkd. Teacher: mdistiller's
cifar_teachers/resnet110_vanilla checkpoint (top-1 74.31), by default
`zoo:resnet110` (fetched, checked and converted once by the teacher zoo: luminet-teachers), or
an earlier `configs/cifar100_teacher.py:resnet110` workdir (--config.teacher.checkpoint=W).

python -m luminet_jax.main --config configs/cifar100_res110_res32.py:method=luminet --workdir W

Expected best test top-1 of the student after 240 epochs (papers, mean of runs):
LumiNet 74.20; KD 73.08; DKD 74.11; vanilla 71.14 (KD/DKD/vanilla as reported in the DKD paper).
"""

from luminet_jax import config_features
from luminet_jax import config_lib as common

# Not published for this pair: LumiNet's defaults.
METHODS = common.cifar_methods(
    luminet=dict(ce_weight=2.0, alpha=31.0, temperature=4.0), dkd_beta=2.0
)

# Feature-based baselines: mdistiller's hyperparameters (luminet_jax/config_features.py).
# ReviewKD: the weight of its authors' CIFAR-100 script (reviewKD.sh) and the
# channel and shape lists of their build_review_kd.
METHODS.update(
    config_features.feature_methods(
        reviewkd=config_features.cifar_reviewkd(1.0, (16, 32, 64, 64), (16, 32, 64, 64))
    )
)


def get_config(arg=None):
    """`arg`: `method=NAME` or a bare NAME (default luminet)."""
    return common.cifar100_pair(
        arg, teacher="resnet110", student="resnet32", methods=METHODS, base_lr=0.05
    )
