"""resnet56 -> resnet20 on CIFAR-100 (DESIGN.md section 3).

Methods: vanilla, kd, dkd, luminet (default), kd_ls, dkd_ls, dml, and the feature-based
fitnet, at, rkd, pkt, sp, vid, nst, kdsvd, ofd, reviewkd, crd, crd_kd. Teacher: mdistiller's
cifar_teachers/resnet56_vanilla checkpoint (top-1 72.34), by default
`zoo:resnet56` (fetched, checked and converted once by the teacher zoo: luminet-teachers), or
an earlier `configs/cifar100_teacher.py:resnet56` workdir (--config.teacher.checkpoint=W).

python -m luminet_jax.main --config configs/cifar100_res56_res20.py:method=luminet --workdir W

Expected best test top-1 of the student after 240 epochs (papers, mean of runs):
LumiNet 72.29; KD 70.66; DKD 71.97; vanilla 69.06 (KD/DKD/vanilla as reported in the DKD paper).
Feature-based (as quoted in the LumiNet paper): FitNet 69.21, AT 70.55, RKD 69.61, OFD 70.98,
ReviewKD 71.89.
CRD 71.16, CRD+KD 71.63 (the CRD paper, Tian et al. 2020).
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
        reviewkd=config_features.cifar_reviewkd(0.6, (16, 32, 64, 64), (16, 32, 64, 64))
    )
)

# DML, CRD and CRD+KD (luminet_jax/config_features.py).
METHODS.update(config_features.extra_methods(peer="resnet56"))


def get_config(arg=None):
    """`arg`: `method=NAME` or a bare NAME (default luminet)."""
    config = common.cifar100_pair(
        arg, teacher="resnet56", student="resnet20", methods=METHODS, base_lr=0.05
    )
    if config.distiller.name == "dml":  # the cohort: the student (member 0) and its peer
        config.student.peers = config.teacher.name
    return config
