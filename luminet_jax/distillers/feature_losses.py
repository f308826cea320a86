"""Pure losses of the feature-based distillers (DESIGN.md section 6), as mdistiller computes them.

Maps are NHWC. Every loss computes in the promoted dtype of its inputs, at least float32
(float64 under x64). `s_feats`/`t_feats` are lists of maps, stage by stage, paired as
mdistiller's `zip` pairs them (the shorter list decides). AT, NST, VID and KD-SVD first
average-pool the larger of two maps to the smaller one's size (PyTorch's
`adaptive_avg_pool2d` windows); OFD pools the teacher to the student's size, as the
reference; SP, RKD and PKT need no pooling; HCL needs equal shapes. OFD and KD-SVD live in
`ofd_losses.py` and `svd_losses.py` and are re-exported here.

Which side carries a gradient follows each reference function; the distillers pass teacher
features without gradient anyway. Batch-relational losses (RKD, PKT, SP) take `axis_name`:
under `shard_map` they gather the embeddings over that axis, compute the global-batch loss
on every shard and `pmean` it, so both the value and the gradient w.r.t. the local shard are
those of the global batch on one device.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from luminet_jax.distillers import feature_maps as fm
from luminet_jax.distillers import ofd_losses, svd_losses


def at_loss(s_feats: Sequence[jax.Array], t_feats: Sequence[jax.Array], *, p: float = 2.0):
    """Attention transfer: sum over stages of mean((a_s - a_t)^2), a = l2norm_HW(mean_C f^p).

    Channels may differ; the larger map is pooled first. Both sides carry gradients (the
    AT distiller uses stages 1..N with weight 1000 and a teacher without gradient).
    """
    total = 0.0
    for f_s, f_t in fm.stage_pairs(s_feats, t_feats, "at_loss"):
        f_s, f_t = fm.pool_to_smaller(*fm.cast(f_s, f_t))
        a_s = fm.l2_normalize(fm.flat(jnp.mean(fm.power(f_s, p), axis=-1)), axis=1)
        a_t = fm.l2_normalize(fm.flat(jnp.mean(fm.power(f_t, p), axis=-1)), axis=1)
        total = total + jnp.mean((a_s - a_t) ** 2)
    return total


def _pdist(e: jax.Array, squared: bool, eps: float) -> jax.Array:
    """Pairwise distances as mdistiller's `_pdist`: clamped at eps, diagonal set to 0."""
    sq = jnp.sum(e * e, axis=1)
    d = sq[:, None] + sq[None, :] - 2.0 * jnp.matmul(e, e.T, precision=fm.HIGHEST)
    d = jnp.maximum(d, eps)  # >= eps, so the sqrt below has a finite derivative everywhere
    if not squared:
        d = jnp.sqrt(d)
    return jnp.where(jnp.eye(e.shape[0], dtype=bool), 0.0, d)


def _mean_positive(d: jax.Array) -> jax.Array:
    positive = d > 0
    return jnp.sum(jnp.where(positive, d, 0.0)) / jnp.sum(positive)


def _smooth_l1(x: jax.Array, y: jax.Array) -> jax.Array:
    """torch's `F.smooth_l1_loss` with beta 1, mean reduction."""
    a = jnp.abs(x - y)
    return jnp.mean(jnp.where(a < 1.0, 0.5 * (x - y) ** 2, a - 0.5))


def _angles(e: jax.Array) -> jax.Array:
    """(B, B, B): <n_ij, n_ik> with n_ij = normalize(e_j - e_i)."""
    n = fm.l2_normalize(e[None, :, :] - e[:, None, :], axis=2)
    return jnp.einsum("ijd,ikd->ijk", n, n, precision=fm.HIGHEST)


def rkd_loss(
    s_emb: jax.Array,
    t_emb: jax.Array,
    *,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
    squared: bool = False,
    eps: float = 1e-12,
    axis_name: str | None = None,
) -> jax.Array:
    """Relational KD: weighted smooth-L1 of distances (each over its mean) and angles.

    Args:
      s_emb, t_emb: (B, ...) embeddings (mdistiller: the pooled features), flattened per
        sample; their widths may differ. The teacher side has no gradient (as the reference).
      distance_weight, angle_weight, squared, eps: mdistiller's RKD hyperparameters.
      axis_name: data axis; the loss is then over the global batch.
    """
    s, t = fm.cast(fm.flat(s_emb), fm.flat(t_emb))
    t = lax.stop_gradient(t)
    s, t = fm.gather(s, axis_name), fm.gather(t, axis_name)
    if s.shape[0] < 2 or t.shape[0] != s.shape[0]:  # Reference: one sample gives NaN there.
        raise ValueError(f"rkd_loss needs equal batches of >= 2; got {s.shape} and {t.shape}.")
    t_d = _pdist(t, squared, eps)
    t_d = t_d / _mean_positive(t_d)
    d = _pdist(s, squared, eps)
    d = d / _mean_positive(d)
    loss_d = _smooth_l1(d, t_d)
    loss_a = _smooth_l1(_angles(s), _angles(t))
    return fm.global_loss(distance_weight * loss_d + angle_weight * loss_a, axis_name)


def _pkt_probs(x: jax.Array, eps: float) -> jax.Array:
    sumsq = jnp.sum(x * x, axis=1, keepdims=True)
    # Reference: torch's sqrt gives a NaN gradient for an all-zero embedding; this is finite.
    norm = jnp.where(sumsq > 0, jnp.sqrt(jnp.where(sumsq > 0, sumsq, 1.0)), 0.0)
    x = x / (norm + eps)
    x = jnp.where(jnp.isnan(x), 0.0, x)
    sim = (jnp.matmul(x, x.T, precision=fm.HIGHEST) + 1.0) / 2.0
    return sim / jnp.sum(sim, axis=1, keepdims=True)


def pkt_loss(
    s_emb: jax.Array, t_emb: jax.Array, *, eps: float = 1e-7, axis_name: str | None = None
) -> jax.Array:
    """Probabilistic KT: mean over all B^2 pairs of P_t * log((P_t + eps) / (P_s + eps)).

    P = (x x^T + 1) / 2, row-normalized, x = emb / (||emb|| + eps) flattened per sample.
    Both sides carry gradients (as the reference function). `axis_name`: global batch.
    """
    s, t = fm.cast(fm.flat(s_emb), fm.flat(t_emb))
    s, t = fm.gather(s, axis_name), fm.gather(t, axis_name)
    p_s, p_t = _pkt_probs(s, eps), _pkt_probs(t, eps)
    return fm.global_loss(jnp.mean(p_t * jnp.log((p_t + eps) / (p_s + eps))), axis_name)


def sp_loss(
    s_feats: Sequence[jax.Array], t_feats: Sequence[jax.Array], *, axis_name: str | None = None
) -> jax.Array:
    """Similarity preserving: sum over the given stages of ||G_t - G_s||_F^2 / B^2.

    G = f f^T of the flattened maps, rows l2-normalized; no pooling (shapes may differ).
    The SP distiller passes only the last stage, as mdistiller. Both sides carry gradients.
    """
    total = 0.0
    for f_s, f_t in fm.stage_pairs(s_feats, t_feats, "sp_loss"):
        f_s, f_t = fm.cast(fm.gather(fm.flat(f_s), axis_name), fm.gather(fm.flat(f_t), axis_name))
        g_s = fm.l2_normalize(jnp.matmul(f_s, f_s.T, precision=fm.HIGHEST), axis=1)
        g_t = fm.l2_normalize(jnp.matmul(f_t, f_t.T, precision=fm.HIGHEST), axis=1)
        total = total + jnp.sum((g_t - g_s) ** 2) / f_s.shape[0] ** 2
    return fm.global_loss(total, axis_name)


def _poly_kernel_mean(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.mean(jnp.einsum("bpc,bpd->bcd", a, b, precision=fm.HIGHEST) ** 2)


def nst_loss(s_feats: Sequence[jax.Array], t_feats: Sequence[jax.Array]) -> jax.Array:
    """Neuron selectivity transfer: MMD with the kernel k(x, y) = (x . y)^2, summed over stages.

    Each channel's map is flattened over HW and l2-normalized; the larger map is pooled
    first; channels may differ. As the reference, the teacher-teacher term is detached,
    so the teacher's gradient comes from the cross term only.
    """
    total = 0.0
    for f_s, f_t in fm.stage_pairs(s_feats, t_feats, "nst_loss"):
        f_s, f_t = fm.pool_to_smaller(*fm.cast(f_s, f_t))
        b, c_s, c_t = f_s.shape[0], f_s.shape[-1], f_t.shape[-1]
        f_s = fm.l2_normalize(f_s.reshape(b, -1, c_s), axis=1)
        f_t = fm.l2_normalize(f_t.reshape(b, -1, c_t), axis=1)
        total = total + (
            lax.stop_gradient(_poly_kernel_mean(f_t, f_t))
            + _poly_kernel_mean(f_s, f_s)
            - 2.0 * _poly_kernel_mean(f_s, f_t)
        )
    return total


def vid_loss(
    pred_mean: jax.Array, t_feat: jax.Array, log_scale: jax.Array, *, eps: float = 1e-5
) -> jax.Array:
    """Variational information distillation, one stage: mean Gaussian negative log-likelihood.

    0.5 * ((pred_mean - t)^2 / var + log var), var = softplus(log_scale) + eps per channel.

    Args:
      pred_mean: the regressor's output (B, h, w, C_t). mdistiller pools a larger student
        map BEFORE the regressor, so the caller does that (a larger `pred_mean` raises).
      t_feat: (B, H, W, C_t) teacher map, pooled here to (h, w) when larger.
      log_scale: (C_t,) the learned log-scales. All three inputs carry gradients.
    """
    pred_mean, t_feat, log_scale = fm.cast(pred_mean, t_feat, log_scale)
    fm.check_map(pred_mean, "predicted")
    fm.check_map(t_feat, "teacher")
    if pred_mean.shape[1] > t_feat.shape[1] or pred_mean.shape[2] > t_feat.shape[2]:
        raise ValueError(
            f"vid_loss: pred_mean {pred_mean.shape} is larger than the teacher map "
            f"{t_feat.shape}; pool the student map before the regressor, as mdistiller."
        )
    t_feat = fm.adaptive_avg_pool(t_feat, pred_mean.shape[1:3])
    if pred_mean.shape != t_feat.shape or log_scale.shape != pred_mean.shape[-1:]:
        raise ValueError(
            f"vid_loss: shapes {pred_mean.shape} (pred), {t_feat.shape} (teacher, pooled) "
            f"and {log_scale.shape} (log_scale) do not match."
        )
    # Reference: log(1 + exp(x)) written as softplus, equal but finite for large x.
    var = jax.nn.softplus(log_scale) + eps
    return jnp.mean(0.5 * ((pred_mean - t_feat) ** 2 / var + jnp.log(var)))


def hcl_loss(s_feats: Sequence[jax.Array], t_feats: Sequence[jax.Array]) -> jax.Array:
    """ReviewKD's hierarchical context loss, summed over levels.

    Per level of height h: (mse(s, t) + sum_{l in (4, 2, 1), l < h} w_l mse(pool_l(s),
    pool_l(t))) / (1 + sum w_l), the weights halving (1/2, 1/4, 1/8) over the levels used.
    Student and teacher maps of a level must have equal shapes; both carry gradients.
    """
    total = 0.0
    for f_s, f_t in fm.stage_pairs(s_feats, t_feats, "hcl_loss"):
        f_s, f_t = fm.cast(f_s, f_t)
        fm.check_map(f_s, "student")
        if f_s.shape != f_t.shape:
            raise ValueError(f"hcl_loss: level shapes differ: {f_s.shape} and {f_t.shape}.")
        h = f_s.shape[1]
        loss, weight, weights = jnp.mean((f_s - f_t) ** 2), 1.0, 1.0
        for size in (4, 2, 1):
            if size >= h:
                continue
            weight /= 2.0
            pooled = fm.adaptive_avg_pool(f_s, (size, size)) - fm.adaptive_avg_pool(
                f_t, (size, size)
            )
            loss = loss + weight * jnp.mean(pooled**2)
            weights += weight
        total = total + loss / weights
    return total


# The losses with their own files, so that every loss is also `feature_losses.<name>`.
ofd_margin = ofd_losses.ofd_margin
ofd_loss = ofd_losses.ofd_loss
kdsvd_loss = svd_losses.kdsvd_loss
adaptive_avg_pool = fm.adaptive_avg_pool
pool_to_smaller = fm.pool_to_smaller
