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
_METHODS = common.cifar_methods(
    luminet=dict(ce_weight=2.0, alpha=33.0, temperature=4.0), dkd_beta=8.0
)

# Feature-based baselines: mdistiller's hyperparameters (luminet_jax/config_features.py).
# ReviewKD: the weight of its authors' CIFAR-100 script (reviewKD.sh) and the
# channel and shape lists of their build_review_kd.
_METHODS.update(
    config_features.feature_methods(
        reviewkd=config_features.cifar_reviewkd(5.0, (64, 128, 256, 256), (64, 128, 256, 256))
    )
)

# DML (Zhang et al. 2018): CE 1 + KL(peer || self) 1 at T 1 for each student; the peer is
# the teacher's architecture (resnet32x4) trained from scratch beside the student, as in the DKD
# paper's tables (DESIGN.md section 6). No teacher checkpoint is read.
_METHODS["dml"] = dict(name="dml", ce_weight=1.0, kd_weight=1.0, temperature=1.0)

# CRD: mdistiller's engine/cfg.py CRD section and configs/cifar100/crd.yaml (CE 1, CRD 0.8,
# 128-d embeddings, K 16384 negatives of other classes, NCE T 0.07, momentum 0.5, "exact").
# CRD+KD: RepDistiller's `-r 1 -a 1 -b 0.8` (KD 1 at T 4 added).
_CRD = dict(
    ce_weight=1.0, feat_weight=0.8, feat_dim=128, num_negatives=16384, temperature=0.07,
    momentum=0.5, mode="exact",
)  # fmt: skip
_METHODS["crd"] = dict(name="crd", **_CRD)
_METHODS["crd_kd"] = dict(name="crd_kd", **_CRD, kd_weight=1.0, kd_temperature=4.0)


def get_config(arg=None):
    """`arg`: `method=NAME` or a bare NAME (default luminet)."""
    config = common.cifar100_pair(
        arg, teacher="resnet32x4", student="resnet8x4", methods=_METHODS, base_lr=0.05
    )
    if config.distiller.name == "dml":  # the cohort: the student (member 0) and its peer
        config.student.peers = config.teacher.name
    return config
