"""Distillation losses: LumiNet and the logit-based baselines it is compared with."""

from __future__ import annotations

import dataclasses

from luminet_jax.distillers import (
    at,
    base,
    common,
    crd,
    dkd,
    dml,
    feature_losses,
    fitnet,
    kd,
    kdsvd,
    logit_standardization,
    luminet,
    nst,
    ofd,
    pkt,
    reviewkd,
    rkd,
    sp,
    vanilla,
    vid,
)

LossOutput = base.LossOutput
Distiller = base.Distiller

perception = luminet.perception
luminet_kl = luminet.luminet_kl
kd_loss = kd.kd_loss
dkd_loss = dkd.dkd_loss
dml_loss = dml.dml_loss
standardize = logit_standardization.standardize
ensemble_logits = common.ensemble_logits
softmax_xent = common.softmax_xent
topk_correct = common.topk_correct
topk_accuracy = common.topk_accuracy
at_loss = feature_losses.at_loss
rkd_loss = feature_losses.rkd_loss
pkt_loss = feature_losses.pkt_loss
sp_loss = feature_losses.sp_loss
nst_loss = feature_losses.nst_loss
vid_loss = feature_losses.vid_loss
ofd_margin = feature_losses.ofd_margin
ofd_loss = feature_losses.ofd_loss
hcl_loss = feature_losses.hcl_loss
kdsvd_loss = feature_losses.kdsvd_loss
adaptive_avg_pool = feature_losses.adaptive_avg_pool
crd_contrast = crd.crd_contrast
crd_update_memory = crd.crd_update_memory
crd_nce_loss = crd.crd_nce_loss

DISTILLERS = {
    "vanilla": vanilla.Vanilla,
    "kd": kd.KD,
    "dkd": dkd.DKD,
    "luminet": luminet.LumiNet,
    "kd_ls": logit_standardization.KDLS,
    "dkd_ls": logit_standardization.DKDLS,
    "crd": crd.CRD,
    "crd_kd": crd.CRDKD,
    "fitnet": fitnet.FitNet,
    "at": at.AT,
    "rkd": rkd.RKD,
    "pkt": pkt.PKT,
    "sp": sp.SP,
    "vid": vid.VID,
    "nst": nst.NST,
    "kdsvd": kdsvd.KDSVD,
    "ofd": ofd.OFD,
    "reviewkd": reviewkd.ReviewKD,
    "dml": dml.DML,
}


def get_distiller(name: str, **hparams) -> base.Distiller:
    """Builds the distiller registered under `name` with the given hyperparameters.

    Args:
      name: a key of `DISTILLERS`.
      **hparams: that distiller's hyperparameters (unset ones keep their defaults).

    Returns:
      A frozen dataclass instance following the `base.Distiller` protocol.

    Raises:
      KeyError: unknown name (the message lists the known names).
      TypeError: a hyperparameter the distiller does not take (the message names it).
    """
    if name not in DISTILLERS:
        raise KeyError(f"Unknown distiller {name!r}; known: {sorted(DISTILLERS)}")
    cls = DISTILLERS[name]
    accepted = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(hparams) - accepted)
    if unknown:
        raise TypeError(
            f"Distiller {name!r} got unknown hyperparameter(s) {unknown}; "
            f"it accepts {sorted(accepted)}."
        )
    return cls(**hparams)
