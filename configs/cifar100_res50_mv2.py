"""resnet50_cifar -> mobilenet_v2 on CIFAR-100 (DESIGN.md section 3).

Methods: vanilla, kd, dkd, luminet (default), kd_ls, dkd_ls, and the feature-based
fitnet, at, rkd, pkt, sp, vid, nst, kdsvd, ofd, reviewkd. Teacher: mdistiller's
cifar_teachers/ResNet50_vanilla checkpoint (top-1 79.34), by default
`zoo:resnet50_cifar` (fetched, checked and converted once by the teacher zoo: luminet-teachers), or
an earlier `configs/cifar100_teacher.py:resnet50_cifar` workdir (--config.teacher.checkpoint=W).

python -m luminet_jax.main --config configs/cifar100_res50_mv2.py:method=luminet --workdir W

Expected best test top-1 of the student after 240 epochs (papers, mean of runs):
LumiNet 70.97; KD 67.35; DKD 70.35; vanilla 64.60 (KD/DKD/vanilla as reported in the DKD paper).
"""

from luminet_jax import config_features
from luminet_jax import config_lib as common

# From the LumiNet reference configs.
METHODS = common.cifar_methods(
    luminet=dict(ce_weight=2.0, alpha=70.0, temperature=8.0), dkd_beta=8.0
)

# Feature-based baselines: mdistiller's hyperparameters (luminet_jax/config_features.py).
# ReviewKD: no published weight for this pair; its authors' train.py default 1.0
# with the channel and shape lists of their build_review_kd.
METHODS.update(
    config_features.feature_methods(
        reviewkd=config_features.cifar_reviewkd(
            1.0,
            (12, 16, 48, 160, 1280),
            (256, 512, 1024, 2048, 2048),
            (1, 2, 4, 8, 16),
            (1, 4, 8, 16, 32),
        )
    )
)


def get_config(arg=None):
    """`arg`: `method=NAME` or a bare NAME (default luminet)."""
    return common.cifar100_pair(
        arg, teacher="resnet50_cifar", student="mobilenet_v2", methods=METHODS, base_lr=0.01
    )  # 0.01 for ShuffleNet/MobileNet students (DESIGN.md section 3)
