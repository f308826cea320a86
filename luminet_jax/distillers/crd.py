"""Contrastive representation distillation (Tian et al. 2020), as mdistiller's `CRD`.

Two learnable embeddings (Linear(pooled -> 128) + L2 norm; student and teacher, both
trained) and two non-learnable memories of one 128-d row per training sample. Each
sample is contrasted with K negatives: the student's embedding against the teacher's
memory rows and the teacher's embedding against the student's memory rows, scored by
exp(<row, v> / T) / Z and fed to the NCE loss with the uniform noise distribution 1 / N.

Everything the reference does on the host is done on device here: the contrastive index
(positive + K negatives, mdistiller's `CIFAR100InstanceSample` "exact"/"relax" modes) is
drawn inside the jitted step from the step key, row by row with a key folded with the
row's global position, so it is the same on 1 or 8 devices and on resume. The memories
are global: the update uses the embeddings all-gathered over the data axis.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax import lax

from luminet_jax.distillers import base, common, crd_sampling, kd
from luminet_jax.models import layers

NCE_EPS = 1e-7  # mdistiller's ContrastLoss eps.
MODES = crd_sampling.MODES
sample_label_state = crd_sampling.sample_label_state
crd_contrast_index = crd_sampling.crd_contrast_index
# Score the whole memory with one matmul when it has at most this many rows per contrast
# column (B x N x D flops, the memory read once), else gather the (B, K+1, D) rows.
MATMUL_MAX_ROWS_PER_COLUMN = 8


def init_memory(rng: jax.Array, num_data: int, dim: int) -> jax.Array:
    """(num_data, dim) rows uniform in [-stdv, stdv), stdv = 1 / sqrt(dim / 3) (mdistiller)."""
    stdv = 1.0 / math.sqrt(dim / 3.0)
    return jax.random.uniform(rng, (num_data, dim), jnp.float32, -stdv, stdv)


def init_embed(rng: jax.Array, dim_in: int, dim_out: int) -> dict[str, jax.Array]:
    """An `nn.Linear(dim_in, dim_out)` with PyTorch's default initialization."""
    k_rng, b_rng = jax.random.split(rng)
    kernel = layers.LINEAR_INIT(k_rng, (dim_in, dim_out), jnp.float32)
    return {"kernel": kernel, "bias": layers.torch_bias_init(dim_in)(b_rng, (dim_out,))}


def embed(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """mdistiller's `Embed`: flatten, linear, divide by the L2 norm (no eps), (B, dim_out)."""
    x = common.to_float(x).reshape(x.shape[0], -1)
    y = x @ params["kernel"].astype(x.dtype) + params["bias"].astype(x.dtype)
    return y / jnp.sqrt(jnp.sum(y * y, axis=1, keepdims=True))


def crd_exp_scores(
    v: jax.Array, memory: jax.Array, contrast_idx: jax.Array, *, temperature: float
) -> jax.Array:
    """exp(<memory[contrast_idx[b, k]], v[b]> / T), (B, K+1); the memory gets no gradient.

    Two exact implementations of the same dot products, chosen by shape: for a memory of
    at most MATMUL_MAX_ROWS_PER_COLUMN * (K+1) rows, one (B, D) x (D, N) matmul scores
    every row and the (B, K+1) scores are picked from it (measured on 2 CPU cores at
    B=64, K=16384, N=50,000, D=128, value and gradient: 0.08 s, against 0.57 s for the
    0.5 GB (B, K+1, D) gather); larger memories (ImageNet) gather the rows instead.
    """
    memory = lax.stop_gradient(memory)
    v = v.astype(jnp.promote_types(v.dtype, memory.dtype))
    highest = lax.Precision.HIGHEST  # exp(x / 0.07) amplifies dot errors 14x (no TF32).
    if memory.shape[0] <= MATMUL_MAX_ROWS_PER_COLUMN * contrast_idx.shape[1]:
        all_scores = jnp.matmul(v, memory.T.astype(v.dtype), precision=highest)  # (B, N)
        dots = jnp.take_along_axis(all_scores, contrast_idx, axis=1)
    else:
        rows = memory[contrast_idx].astype(v.dtype)  # (B, K+1, D)
        dots = jnp.einsum("bkd,bd->bk", rows, v, precision=highest)
    return jnp.exp(dots / temperature)


def crd_set_z(
    z: jax.Array, exp_scores: jax.Array, *, num_data: int, axis_name: str | None = None
) -> jax.Array:
    """The normalization constant: `z` once set (>= 0), else mean(exp_scores) * num_data.

    The reference stores -1 until its first forward pass sets Z from that batch; the mean
    is over the global batch here, and Z is a constant (no gradient), as its `.item()`.
    """
    mean = jnp.mean(lax.stop_gradient(exp_scores))
    if axis_name is not None:
        mean = lax.pmean(mean, axis_name)
    return jnp.where(z < 0, mean * num_data, z).astype(exp_scores.dtype)


def crd_contrast(
    v_s: jax.Array,
    v_t: jax.Array,
    memory_s: jax.Array,
    memory_t: jax.Array,
    contrast_idx: jax.Array,
    *,
    temperature: float,
    z_s: jax.Array | float,
    z_t: jax.Array | float,
) -> tuple[jax.Array, jax.Array]:
    """mdistiller's `ContrastMemory` scores with set constants Z (DESIGN.md section 6).

    Args:
      v_s: (B, D) student embeddings (L2-normalized).
      v_t: (B, D) teacher embeddings.
      memory_s: (N, D) student memory (no gradient).
      memory_t: (N, D) teacher memory (no gradient).
      contrast_idx: (B, K+1) int sample indices, the positive in column 0.
      temperature: the NCE temperature T.
      z_s: the student side's normalization constant.
      z_t: the teacher side's.

    Returns:
      (out_s, out_t), each (B, K+1): exp(<memory_t[idx], v_s> / T) / z_s and
      exp(<memory_s[idx], v_t> / T) / z_t.
    """
    out_s = crd_exp_scores(v_s, memory_t, contrast_idx, temperature=temperature) / z_s
    out_t = crd_exp_scores(v_t, memory_s, contrast_idx, temperature=temperature) / z_t
    return out_s, out_t


def crd_update_memory(
    memory: jax.Array, embeddings: jax.Array, index: jax.Array, *, momentum: float
) -> jax.Array:
    """memory[index] <- l2norm(momentum * memory[index] + (1 - momentum) * embeddings)."""
    emb = lax.stop_gradient(embeddings).astype(memory.dtype)
    rows = momentum * memory[index] + (1.0 - momentum) * emb
    rows = rows / jnp.sqrt(jnp.sum(rows * rows, axis=1, keepdims=True))
    return memory.at[index].set(rows)


def crd_nce_loss(scores: jax.Array, *, num_data: int, axis_name: str | None = None) -> jax.Array:
    """mdistiller's `ContrastLoss` on (B, K+1) scores, the positive in column 0.

    With m = K and Pn = 1 / num_data: -(sum_b log(x_b0 / (x_b0 + m Pn + eps)) +
    sum_{b, k>=1} log(m Pn / (x_bk + m Pn + eps))) / B, the batch global with `axis_name`.
    """
    m_pn = (scores.shape[1] - 1) / float(num_data)
    pos, neg = scores[:, 0], scores[:, 1:]
    log_d1 = jnp.log(pos / (pos + (m_pn + NCE_EPS)))
    log_d0 = jnp.log(m_pn / (neg + (m_pn + NCE_EPS)))
    return common.batch_mean(-(log_d1 + jnp.sum(log_d0, axis=1)), axis_name)


def _gather(x: jax.Array, axis_name: str) -> jax.Array:
    """The shards' rows concatenated in device order, typed as replicated over the axis.

    `lax.all_gather`'s result is still "varying" under shard_map's check_vma; a psum of
    zero-padded blocks is the same array (adding zeros is exact) and is invariant.
    """
    x = lax.stop_gradient(x)
    blocks = jnp.zeros((lax.axis_size(axis_name), *x.shape), x.dtype)
    blocks = blocks.at[lax.axis_index(axis_name)].set(x)
    return lax.psum(blocks, axis_name).reshape(-1, *x.shape[1:])


@dataclasses.dataclass(frozen=True, kw_only=True)
class CRD(base.Distiller):
    """loss = ce_weight * CE + feat_weight * (NCE(out_s) + NCE(out_t)) [+ kd_weight * KD].

    Learnable params: {"embed_s", "embed_t"} (each {"kernel", "bias"}: pooled dims x
    feat_dim + feat_dim; 65,792 for resnet32x4 -> resnet8x4). State: "memory_s",
    "memory_t" (num_train x feat_dim float32 each: 2 x 50,000 x 128 = 12.8M numbers, 51 MB,
    on CIFAR-100), "z_s", "z_t" (-1 until the first step sets them), plus "order" and
    "sorted_labels" (num_train int32 each) from `data_state`, which the trainer must call
    once with the training labels: the negatives come from the other classes.

    Memory and time per step (B rows, K negatives, N samples, D = feat_dim, float32): the
    scores pick (B, K+1) entries of one (B, N) matmul per view (B x N x 4 bytes, 12.8 MB at
    B = 64, N = 50,000) instead of gathering (B, K+1, D) rows (0.54 GB per view at B = 64,
    K = 16,384). K distinct negatives per row take a radix select over N hashed keys
    (`crd_sampling`); `replace=True` draws them with replacement in O(B x K). Loss, both
    gradients and the memory update at those sizes, jitted, on 2 CPU cores shared with
    other jobs (load ~12): 1.7 s per step, 0.65-0.85 s with `replace=True`.

    `kd_weight` > 0 adds Hinton KD at `kd_temperature` (RepDistiller's CRD+KD,
    `-r 1 -a 1 -b 0.8`), reported as the extra part "loss_logit_kd".
    """

    uses_feats: ClassVar[bool] = True
    uses_train_labels: ClassVar[bool] = True

    ce_weight: float = 1.0
    feat_weight: float = 0.8
    feat_dim: int = 128
    num_negatives: int = 16384  # mdistiller's CRD.NCE.K
    temperature: float = 0.07  # the NCE temperature
    momentum: float = 0.5
    mode: str = "exact"
    replace: bool = False  # True: mdistiller's ImageNetInstanceSample (always replaces)
    kd_weight: float = 0.0
    kd_temperature: float = 4.0

    def __post_init__(self):
        owner = type(self).__name__
        common.check_positive("temperature", self.temperature, owner=owner)
        common.check_positive("kd_temperature", self.kd_temperature, owner=owner)
        common.check_positive("num_negatives", self.num_negatives, owner=owner)
        if self.mode not in MODES:
            raise ValueError(f"{owner}: mode must be one of {MODES}; got {self.mode!r}.")

    def init(self, rng, s_feats, t_feats, *, num_train=None, **kwargs) -> dict[str, Any]:
        """Embeddings from the pooled widths; memories of `num_train` rows; Z unset."""
        if num_train is None or t_feats is None:
            raise ValueError("CRD.init needs the teacher's feats and num_train.")
        keys = jax.random.split(rng, 4)
        params = {
            "embed_s": init_embed(keys[0], s_feats["pooled"].shape[-1], self.feat_dim),
            "embed_t": init_embed(keys[1], t_feats["pooled"].shape[-1], self.feat_dim),
        }
        state = {
            "memory_s": init_memory(keys[2], num_train, self.feat_dim),
            "memory_t": init_memory(keys[3], num_train, self.feat_dim),
            "z_s": jnp.full((), -1.0, jnp.float32),
            "z_t": jnp.full((), -1.0, jnp.float32),
        }
        return {"params": params, "state": state}

    def data_state(self, state: dict[str, Any], labels: Any) -> dict[str, Any]:
        """The state with the training labels added (`sample_label_state`); call once."""
        if len(labels) != state["memory_s"].shape[0]:
            raise ValueError(
                f"CRD: {len(labels)} labels for a memory of {state['memory_s'].shape[0]} rows."
            )
        return {**state, **sample_label_state(labels)}

    def loss(self, x: base.Inputs) -> base.LossOutput:
        labels, index, axis_name = x.labels, x.index, x.axis_name
        named = dict(s_feats=x.s_feats, t_feats=x.t_feats, index=index, extra=x.extra, rng=x.rng)
        missing = [name for name, value in named.items() if value is None]
        if missing:
            raise ValueError(f"CRD needs {missing} (training batches must carry 'index').")
        state = x.extra["state"]
        if "order" not in state:
            raise ValueError("CRD's state has no training labels: call distiller.data_state.")
        s_logits, t_logits = common.distiller_inputs(x.s_logits, x.t_logits, labels)
        params = x.extra["params"]
        v_s = embed(params["embed_s"], x.s_feats["pooled"])
        v_t = embed(params["embed_t"], lax.stop_gradient(x.t_feats["pooled"]))
        memory_s, memory_t = state["memory_s"], state["memory_t"]
        num_data = memory_s.shape[0]

        offset = 0 if axis_name is None else lax.axis_index(axis_name) * index.shape[0]
        contrast_idx = crd_contrast_index(
            x.rng,
            index,
            labels,
            state["order"],
            state["sorted_labels"],
            num_negatives=self.num_negatives,
            mode=self.mode,
            replace=self.replace,
            row_offset=offset,
        )
        # The scores use the memories before this step's update, as the reference.
        e_s = crd_exp_scores(v_s, memory_t, contrast_idx, temperature=self.temperature)
        e_t = crd_exp_scores(v_t, memory_s, contrast_idx, temperature=self.temperature)
        z_s = crd_set_z(state["z_s"], e_s, num_data=num_data, axis_name=axis_name)
        z_t = crd_set_z(state["z_t"], e_t, num_data=num_data, axis_name=axis_name)
        nce = crd_nce_loss(e_s / z_s, num_data=num_data, axis_name=axis_name)
        nce = nce + crd_nce_loss(e_t / z_t, num_data=num_data, axis_name=axis_name)

        all_s, all_t, all_index = v_s, v_t, index
        if axis_name is not None:
            # Reference: under DataParallel only one replica's memory update survives; the
            # update here uses the whole global batch, so every device holds one memory.
            all_s, all_t = _gather(v_s, axis_name), _gather(v_t, axis_name)
            all_index = _gather(index, axis_name)
        new_state = {
            **state,
            "memory_s": crd_update_memory(memory_s, all_s, all_index, momentum=self.momentum),
            "memory_t": crd_update_memory(memory_t, all_t, all_index, momentum=self.momentum),
            "z_s": z_s.astype(state["z_s"].dtype),
            "z_t": z_t.astype(state["z_t"].dtype),
        }
        ce = self.ce_weight * common.softmax_xent(s_logits, labels, axis_name=axis_name)
        parts = {"loss_ce": ce, "loss_kd": self.feat_weight * nce}
        if self.kd_weight:
            parts["loss_logit_kd"] = self.kd_weight * kd.kd_loss(
                s_logits, t_logits, temperature=self.kd_temperature, axis_name=axis_name
            )
        return base.LossOutput(total=sum(parts.values()), parts=parts, state=new_state)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CRDKD(CRD):
    """CRD + KD: RepDistiller's `-r 1 -a 1 -b 0.8` (CE 1, KD 1 at T = 4, CRD 0.8)."""

    kd_weight: float = 1.0
