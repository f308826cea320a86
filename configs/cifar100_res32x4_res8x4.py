"""resnet32x4 -> resnet8x4 on CIFAR-100 (DESIGN.md section 3).

Methods: vanilla, kd, dkd, luminet (default), kd_ls, dkd_ls, dml, and the feature-based
fitnet, at, rkd, pkt, sp, vid, nst, kdsvd, ofd, reviewkd, crd, crd_kd. Teacher: mdistiller's
cifar_teachers/resnet32x4_vanilla checkpoint (top-1 79.42), by default
`zoo:resnet32x4` (fetched, checked and converted once by the teacher zoo: luminet-teachers), or
an earlier `configs/cifar100_teacher.py:resnet32x4` workdir (--config.teacher.checkpoint=W).

python -m luminet_jax.main --config configs/cifar100_res32x4_res8x4.py:method=luminet --workdir W

Expected best test top-1 of the student after 240 epochs (papers, mean of runs):
LumiNet 77.50; KD 73.33; DKD 76.32; vanilla 72.50 (KD/DKD/vanilla as reported in the DKD paper).
Feature-based (as quoted in the LumiNet paper): FitNet 73.50, AT 73.44, RKD 71.90, OFD 74.95,
ReviewKD 75.63.
CRD 75.51, CRD+KD 75.46 (the CRD paper, Tian et al. 2020).
"""

from luminet_jax import config_features
from luminet_jax import config_lib as common

# From the LumiNet reference configs.
METHODS = common.cifar_methods(
    luminet=dict(ce_weight=2.0, alpha=33.0, temperature=4.0), dkd_beta=8.0
)

# Feature-based baselines: mdistiller's hyperparameters (luminet_jax/config_features.py).
# ReviewKD: the weight of its authors' CIFAR-100 script (reviewKD.sh) and the
# channel and shape lists of their build_review_kd.
METHODS.update(
    config_features.feature_methods(
        reviewkd=config_features.cifar_reviewkd(5.0, (64, 128, 256, 256), (64, 128, 256, 256))
    )
)

# DML, CRD and CRD+KD (luminet_jax/config_features.py).
METHODS.update(config_features.extra_methods(peer="resnet32x4"))


def get_config(arg=None):
    """`arg`: `method=NAME` or a bare NAME (default luminet)."""
    config = common.cifar100_pair(
        arg, teacher="resnet32x4", student="resnet8x4", methods=METHODS, base_lr=0.05
    )
    if config.distiller.name == "dml":  # the cohort: the student (member 0) and its peer
        config.student.peers = config.teacher.name
    return config
