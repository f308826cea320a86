"""wrn_40_2 -> wrn_40_1 on CIFAR-100 (DESIGN.md section 3).

Methods: vanilla, kd, dkd, luminet (default), kd_ls, dkd_ls. Teacher: mdistiller's
cifar_teachers/wrn_40_2_vanilla checkpoint (top-1 75.61), converted to .npz/orbax
or an earlier `configs/cifar100_teacher.py:wrn_40_2` workdir.

python -m luminet_jax.main --config configs/cifar100_wrn40_2_wrn40_1.py:method=luminet \
    --config.teacher.checkpoint=TEACHER --workdir W

Expected best test top-1 of the student after 240 epochs (papers, mean of runs):
LumiNet 75.12; KD 73.54; DKD 74.81; vanilla 71.98 (KD/DKD/vanilla as reported in the DKD paper).
"""

from luminet_jax import config_lib as common

# From the LumiNet reference configs.
_METHODS = common.cifar_methods(
    luminet=dict(ce_weight=1.0, alpha=75.0, temperature=8.0), dkd_beta=6.0
)


def get_config(arg=None):
    """`arg`: `method=NAME` or a bare NAME (default luminet)."""
    return common.cifar100_pair(
        arg, teacher="wrn_40_2", student="wrn_40_1", methods=_METHODS, base_lr=0.05
    )
