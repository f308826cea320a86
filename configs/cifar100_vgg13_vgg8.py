"""vgg13 -> vgg8 on CIFAR-100 (DESIGN.md section 3).

Methods: vanilla, kd, dkd, luminet (default), kd_ls, dkd_ls, and the feature-based
fitnet, at, rkd, pkt, sp, vid, nst, kdsvd, ofd, reviewkd. Teacher: mdistiller's
cifar_teachers/vgg13_vanilla checkpoint (top-1 74.64), by default
`zoo:vgg13` (fetched, checked and converted once by the teacher zoo: luminet-teachers), or
an earlier `configs/cifar100_teacher.py:vgg13` workdir (--config.teacher.checkpoint=W).

python -m luminet_jax.main --config configs/cifar100_vgg13_vgg8.py:method=luminet --workdir W

Expected best test top-1 of the student after 240 epochs (papers, mean of runs):
LumiNet 74.94; KD 72.98; DKD 74.68; vanilla 70.36 (KD/DKD/vanilla as reported in the DKD paper).
"""

from luminet_jax import config_features
from luminet_jax import config_lib as common

# From the LumiNet reference configs.
METHODS = common.cifar_methods(
    luminet=dict(ce_weight=1.0, alpha=70.0, temperature=8.0), dkd_beta=6.0
)

# Feature-based baselines: mdistiller's hyperparameters (luminet_jax/config_features.py).
# ReviewKD: no published weight for this pair; its authors' train.py default 1.0
# with the channel and shape lists of their build_review_kd.
METHODS.update(
    config_features.feature_methods(
        reviewkd=config_features.cifar_reviewkd(
            1.0, (128, 256, 512, 512, 512), (128, 256, 512, 512, 512), (1, 4, 4, 8, 16)
        )
    )
)


def get_config(arg=None):
    """`arg`: `method=NAME` or a bare NAME (default luminet)."""
    return common.cifar100_pair(arg, teacher="vgg13", student="vgg8", methods=METHODS, base_lr=0.05)
