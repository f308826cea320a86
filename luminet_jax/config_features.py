"""The feature-based baselines' rows of the config files' method tables (DESIGN.md section 6).

Values are mdistiller's (`mdistiller/engine/cfg.py`, `configs/cifar100/*.yaml`), the same
for every CIFAR-100 pair as in RepDistiller's scripts; ReviewKD's weight and its per-pair
channel and shape lists come from each pair's file (its authors' CIFAR-100 script and
`build_review_kd`, mdistiller's `configs/cifar100/reviewkd.yaml` and ImageNet YAMLs).
Keys are the distillers' keyword arguments, so a misspelled one fails at start-up.
"""

from __future__ import annotations

from typing import Any

# Every feature-based method a CIFAR-100 pair file defines (ReviewKD only where its
# authors published the pair's weight).
FEATURE_METHODS = ("fitnet", "at", "rkd", "pkt", "sp", "vid", "nst", "kdsvd", "ofd")


def feature_methods(
    *, reviewkd: dict[str, Any] | None = None, ofd_weight: float = 1e-3
) -> dict[str, dict[str, Any]]:
    """method name -> get_distiller kwargs for the feature-based baselines.

    Args:
      reviewkd: the pair's ReviewKD kwargs (reviewkd_weight, in_channels, out_channels,
        shapes, out_shapes, ...); None leaves ReviewKD out of the table.
      ofd_weight: OFD's feature weight (1e-3 on CIFAR; 1e-4 on ImageNet, as mdistiller's
        ImageNet YAML and OFD's ImageNet script).
    """
    table = {
        "fitnet": dict(name="fitnet", ce_weight=1.0, feat_weight=100.0, hint_layer=2),
        "at": dict(name="at", ce_weight=1.0, feat_weight=1000.0, p=2.0),
        "rkd": dict(
            name="rkd",
            ce_weight=1.0,
            feat_weight=1.0,
            distance_weight=25.0,
            angle_weight=50.0,
            squared=False,
            eps=1e-12,
        ),
        "pkt": dict(name="pkt", ce_weight=1.0, feat_weight=30000.0),
        "sp": dict(name="sp", ce_weight=1.0, feat_weight=3000.0),
        "vid": dict(name="vid", ce_weight=1.0, feat_weight=1.0, init_pred_var=5.0, eps=1e-5),
        "nst": dict(name="nst", ce_weight=1.0, feat_weight=50.0),
        "kdsvd": dict(name="kdsvd", ce_weight=1.0, feat_weight=1.0, k=1),
        # teacher_train: the teacher's BatchNorm on batch statistics, as mdistiller's OFD.
        "ofd": dict(
            name="ofd", ce_weight=1.0, feat_weight=ofd_weight, kernel_size=1, teacher_train=True
        ),
    }
    if reviewkd is not None:
        table["reviewkd"] = dict(
            name="reviewkd", **{"ce_weight": 1.0, "warmup_epochs": 20, **reviewkd}
        )
    return table


def extra_methods(peer: str) -> dict[str, dict[str, Any]]:
    """The rows the two CIFAR-100 pairs of Table 3 add: DML, CRD and CRD+KD.

    DML (Zhang et al. 2018): CE 1 + KL(peer || self) 1 at T 1 for each student; the peer is
    the teacher's architecture (`peer`) trained from scratch beside the student, as in the
    DKD paper's tables (DESIGN.md section 6); no teacher checkpoint is read (the pair file
    sets config.student.peers). CRD: mdistiller's engine/cfg.py CRD section and
    configs/cifar100/crd.yaml (CE 1, CRD 0.8, 128-d embeddings, K 16384 negatives of other
    classes, NCE T 0.07, momentum 0.5, "exact"). CRD+KD: RepDistiller's `-r 1 -a 1 -b 0.8`
    (KD 1 at T 4 added).
    """
    del peer  # the same values for every pair; the name documents the cohort
    crd = dict(
        ce_weight=1.0,
        feat_weight=0.8,
        feat_dim=128,
        num_negatives=16384,
        temperature=0.07,
        momentum=0.5,
        mode="exact",
    )
    return {
        "dml": dict(name="dml", ce_weight=1.0, kd_weight=1.0, temperature=1.0),
        "crd": dict(name="crd", **crd),
        "crd_kd": dict(name="crd_kd", **crd, kd_weight=1.0, kd_temperature=4.0),
    }


def cifar_reviewkd(
    weight: float,
    in_channels: tuple[int, ...],
    out_channels: tuple[int, ...],
    shapes: tuple[int, ...] = (1, 8, 16, 32),
    out_shapes: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """A CIFAR-100 pair's ReviewKD kwargs (student features after the ReLU, warmup 20)."""
    return dict(
        reviewkd_weight=weight,
        in_channels=tuple(in_channels),
        out_channels=tuple(out_channels),
        shapes=tuple(shapes),
        out_shapes=tuple(shapes if out_shapes is None else out_shapes),
        stu_preact=False,
    )
