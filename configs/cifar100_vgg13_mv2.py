"""vgg13 -> mobilenet_v2 on CIFAR-100 (DESIGN.md section 3).

Methods: vanilla, kd, dkd, luminet (default), kd_ls, dkd_ls, and the feature-based
fitnet, at, rkd, pkt, sp, vid, nst, kdsvd, ofd, reviewkd. Teacher: mdistiller's
cifar_teachers/vgg13_vanilla checkpoint (top-1 74.64), by default
`zoo:vgg13` (fetched, checked and converted once by the teacher zoo: luminet-teachers), or
an earlier `configs/cifar100_teacher.py:vgg13` workdir (--config.teacher.checkpoint=W).

python -m luminet_jax.main --config configs/cifar100_vgg13_mv2.py:method=luminet --workdir W

Expected best test top-1 of the student after 240 epochs (papers, mean of runs):
LumiNet 70.50; KD 67.37; DKD 69.71; vanilla 64.60 (KD/DKD/vanilla as reported in the DKD paper).
"""

from luminet_jax import config_features
from luminet_jax import config_lib as common

# From the LumiNet reference configs.
METHODS = common.cifar_methods(
    luminet=dict(ce_weight=2.0, alpha=70.0, temperature=8.0), dkd_beta=6.0
)

# Feature-based baselines: mdistiller's hyperparameters (luminet_jax/config_features.py).
# ReviewKD: no published weight for this pair; its authors' train.py default 1.0
# with the channel and shape lists of their build_review_kd.
METHODS.update(
    config_features.feature_methods(
        reviewkd=config_features.cifar_reviewkd(
            1.0,
            (12, 16, 48, 160, 1280),
            (128, 256, 512, 512, 512),
            (1, 2, 4, 8, 16),
            (1, 4, 4, 8, 16),
        )
    )
)


def get_config(arg=None):
    """`arg`: `method=NAME` or a bare NAME (default luminet)."""
    return common.cifar100_pair(
        arg, teacher="vgg13", student="mobilenet_v2", methods=METHODS, base_lr=0.01
    )  # 0.01 for ShuffleNet/MobileNet students (DESIGN.md section 3)
