"""The reduced study's feature-based and DML rows: resnet20 -> resnet8 on the CIFAR-10 sample.

`experiments/reduced_cifar10/config.py:method=NAME,epochs=N` with NAME one of FitNet, AT,
RKD, OFD, CRD, ReviewKD, DML (lower case); the data, batch, schedule and eval are
configs/quickstart.py's, as for the study's KD and LumiNet rows (run.py pins those). The
hyperparameters are mdistiller's CIFAR-100 values (luminet_jax/config_features.py), except
where the 3,000-image, 15-epoch setting forces a change (marked `# Reference:`).
"""

from configs import quickstart
from luminet_jax import config_features
from luminet_jax import config_lib as common

TEACHER, STUDENT = "resnet20", "resnet8"
WIDTHS = (16, 32, 64, 64)  # resnet20's and resnet8's stage widths and pooled width

_FEATURES = config_features.feature_methods(
    reviewkd=config_features.cifar_reviewkd(0.6, WIDTHS, WIDTHS)  # as resnet56 -> resnet20
)
METHODS = {name: dict(_FEATURES[name]) for name in ("fitnet", "at", "rkd", "ofd", "reviewkd")}
# Reference: mdistiller ramps ReviewKD's weight over 20 of 240 epochs; here over 2 of 15, as
# LumiNet's and DKD's ramps in this study.
METHODS["reviewkd"]["warmup_epochs"] = 2
_EXTRA = config_features.extra_methods(peer=TEACHER)
# CRD: mdistiller's values; Reference: K = 16,384 negatives is a third of CIFAR-100's 50,000
# samples and more than the sample's 3,000, so K here is 1,024, a third of the 3,000 (drawn
# from the 2,700 samples of the other classes).
METHODS["crd"] = dict(_EXTRA["crd"], num_negatives=1024)
# DML: the peer is the teacher's architecture (resnet20) trained from scratch beside the
# student (DESIGN.md section 6); no teacher is read.
METHODS["dml"] = _EXTRA["dml"]


def get_config(arg=None):
    """`arg`: `method=NAME` (a key of METHODS), `teacher_dir=DIR`, `epochs=N`."""
    parsed = common.parse_arg(arg, method="fitnet", teacher_dir="", epochs=15)
    if parsed.method not in METHODS:
        raise ValueError(f"Unknown method {parsed.method!r}; known: {sorted(METHODS)}")
    config = quickstart.get_config(f"method=kd,epochs={parsed.epochs}")
    config.student = dict(name=STUDENT)
    config.teacher = dict(name=TEACHER, checkpoint=parsed.teacher_dir)
    config.distiller = dict(METHODS[parsed.method])
    if parsed.method == "dml":
        config.student.peers = TEACHER
        config.teacher = dict(name="", checkpoint="")
    return config
