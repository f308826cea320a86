"""resnet32x4 -> shufflenet_v1 on CIFAR-100 (DESIGN.md section 3).

Methods: vanilla, kd, dkd, luminet (default), kd_ls, dkd_ls, and the feature-based
fitnet, at, rkd, pkt, sp, vid, nst, kdsvd, ofd, reviewkd. Teacher: mdistiller's
cifar_teachers/resnet32x4_vanilla checkpoint (top-1 79.42), by default
`zoo:resnet32x4` (fetched, checked and converted once by the teacher zoo: luminet-teachers), or
an earlier `configs/cifar100_teacher.py:resnet32x4` workdir (--config.teacher.checkpoint=W).

python -m luminet_jax.main --config configs/cifar100_res32x4_shv1.py:method=luminet --workdir W

Expected best test top-1 of the student after 240 epochs (papers, mean of runs):
LumiNet 76.66; KD 74.07; DKD 76.45; vanilla 70.50 (KD/DKD/vanilla as reported in the DKD paper).
"""

from luminet_jax import config_features
from luminet_jax import config_lib as common

# Not published for this pair: LumiNet's defaults.
METHODS = common.cifar_methods(
    luminet=dict(ce_weight=2.0, alpha=31.0, temperature=4.0), dkd_beta=8.0
)

# Feature-based baselines: mdistiller's hyperparameters (luminet_jax/config_features.py).
# ReviewKD: the weight of its authors' CIFAR-100 script (reviewKD.sh) and the
# channel and shape lists of their build_review_kd.
METHODS.update(
    config_features.feature_methods(
        reviewkd=config_features.cifar_reviewkd(
            5.0, (240, 480, 960, 960), (64, 128, 256, 256), (1, 4, 8, 16), (1, 8, 16, 32)
        )
    )
)


def get_config(arg=None):
    """`arg`: `method=NAME` or a bare NAME (default luminet)."""
    return common.cifar100_pair(
        arg, teacher="resnet32x4", student="shufflenet_v1", methods=METHODS, base_lr=0.01
    )  # 0.01 for ShuffleNet/MobileNet students (DESIGN.md section 3)
