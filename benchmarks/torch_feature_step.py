"""PyTorch reference steps of FitNet, CRD and ReviewKD (mdistiller's semantics), for timing.

The same step as benchmarks/torch_step.py (teacher forward in eval mode without gradients,
student forward in train mode, loss, backward, SGD with momentum 0.9 and coupled weight
decay 5e-4), with the method's own modules trained in the same SGD group as the student
(mdistiller's `get_learnable_parameters`) and in train mode (their BatchNorms on batch
statistics):

- FitNet: mdistiller's ConvReg (for equal sizes a 1x1 conv with bias, BatchNorm, ReLU) maps
  the student's `hint_layer` map ("feats"[2]: stage2 after its ReLU) onto the teacher's;
  loss = CE + 100 * mse.
- CRD: linear embeddings of both pooled features (+ L2 normalization), two memories of
  num_train x 128 (uniform in +-1/sqrt(128/3)), scores exp(<memory row, embedding> / 0.07)
  over the positive and K negatives, normalization constants Z set on the first step and
  kept, the NCE loss of both views, then the momentum-0.5 update of the batch's memory rows;
  loss = CE + 0.8 * (NCE_s + NCE_t).
- ReviewKD: the ABF chain from the pooled features up through stages 3, 2, 1 of the
  student, compared with the teacher's pre-ReLU stages and pooled features by the HCL;
  loss = CE + min(epoch / 20, 1) * 5 * HCL. The channel and shape lists are read off the
  two models' features (for resnet32x4 -> resnet8x4 at 32x32 they are mdistiller's
  (64, 128, 256, 256) and (1, 8, 16, 32)).

CRD's batches carry sample indices and contrastive indices (the positive, the sample itself,
then K negatives drawn without replacement from the samples of the other classes: "exact"
mode). mdistiller draws them per sample in its DataLoader workers, outside the step; here a
small pool of such batches is drawn with NumPy before timing (sample indices of one random
permutation, so no index repeats within a batch; random labels for the num_train samples,
the batch's labels being its samples' labels), and each step takes the next batch of the
pool. The images stay one fixed synthetic batch.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

try:  # run as `python benchmarks/step.py` (repo root on sys.path) or from benchmarks/
    from benchmarks import step as jax_step
    from benchmarks import torch_models
except ImportError:  # pragma: no cover
    import step as jax_step  # type: ignore[no-redef]
    import torch_models  # type: ignore[no-redef]

METHODS = ("fitnet", "crd", "reviewkd")
NUM_TRAIN = 50_000  # CIFAR-100's training set: CRD's memories and sample indices
# The resnet32x4 -> resnet8x4 recipe: the pair config's (benchmarks/step.py's HPARAMS), in
# the keywords of the modules below. CRD samples its negatives as mdistiller ("exact");
# ReviewKD's channel and shape lists are read off the models, its mid-channel cap is the
# distiller's default.
_JAX = jax_step.HPARAMS
HPARAMS = {
    "fitnet": dict(_JAX["fitnet"]),
    "crd": {k: v for k, v in _JAX["crd"].items() if k != "mode"},
    "reviewkd": {k: _JAX["reviewkd"][k] for k in ("ce_weight", "reviewkd_weight", "warmup_epochs")}
    | {"max_mid_channel": 512},
}


class ConvReg(nn.Module):
    """FitNet's regressor from an NCHW student map shape to the teacher's: a 3x3 stride-2
    conv (s = 2t), a 4x4 stride-2 transposed conv (2s = t) or a valid conv of kernel
    1 + s - t (s >= t), each with bias, then BatchNorm and ReLU."""

    def __init__(self, s_shape, t_shape):
        super().__init__()
        (s_c, s_h, s_w), (t_c, t_h, t_w) = tuple(s_shape[1:]), tuple(t_shape[1:])
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, 3, stride=2, padding=1)
        elif 2 * s_h == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, 4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, (1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ValueError(f"ConvReg: no mapping from {s_h}x{s_w} to {t_h}x{t_w}")
        self.bn = nn.BatchNorm2d(t_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class Embed(nn.Module):
    """CRD's embedding: flatten, linear, L2 normalization over the features."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x.reshape(x.shape[0], -1))
        return z / z.pow(2).sum(1, keepdim=True).sqrt()


class ContrastMemory(nn.Module):
    """CRD's two memories (student's view, teacher's view) and normalization constants."""

    def __init__(self, dim: int, num_train: int, temperature: float, momentum: float):
        super().__init__()
        self.temperature, self.momentum = temperature, momentum
        stdv = 1.0 / math.sqrt(dim / 3)
        for name in ("memory_s", "memory_t"):
            self.register_buffer(name, torch.rand(num_train, dim) * (2 * stdv) - stdv)
        self.register_buffer("z", torch.full((2,), -1.0))  # (Z_s, Z_t); < 0: not set yet

    def scores(self, memory, v, contrast_idx):
        """exp(<memory[contrast_idx], v> / T): (B, K + 1), the positive first."""
        b, k1 = contrast_idx.shape
        rows = memory.index_select(0, contrast_idx.reshape(-1)).view(b, k1, -1)
        return torch.exp(torch.bmm(rows.to(v.dtype), v.unsqueeze(2)).squeeze(2) / self.temperature)

    def forward(self, v_s, v_t, index, contrast_idx):
        """(student's scores / Z_s, teacher's scores / Z_t); then updates both memories'
        rows `index` (v_s into the student's, v_t into the teacher's)."""
        out_s = self.scores(self.memory_t, v_s, contrast_idx).float()
        out_t = self.scores(self.memory_s, v_t, contrast_idx).float()
        num_train = self.memory_s.shape[0]
        with torch.no_grad():
            for i, out in enumerate((out_s, out_t)):
                if self.z[i] < 0:
                    self.z[i] = out.mean() * num_train
        out_s, out_t = out_s / self.z[0], out_t / self.z[1]
        with torch.no_grad():
            for memory, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                mixed = memory.index_select(0, index) * self.momentum
                mixed += v.detach().float() * (1 - self.momentum)
                memory.index_copy_(0, index, mixed / mixed.pow(2).sum(1, keepdim=True).sqrt())
        return out_s, out_t


def nce_loss(x: torch.Tensor, num_train: int, eps: float = 1e-7) -> torch.Tensor:
    """CRD's NCE loss of (B, K + 1) normalized scores (positive first) under uniform noise."""
    m_pn = (x.shape[1] - 1) / num_train
    log_pos = torch.log(x[:, 0] / (x[:, 0] + m_pn + eps))
    log_neg = torch.log(m_pn / (x[:, 1:] + m_pn + eps))
    return -(log_pos.sum() + log_neg.sum()) / x.shape[0]


class ABF(nn.Module):
    """ReviewKD's attention-based fusion: conv1x1 + BN; with `fuse`, a sigmoid attention
    mixes it with the residual (nearest-resized); nearest resize; conv3x3 + BN."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels)
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.att_conv = nn.Conv2d(2 * mid_channels, 2, 1) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x, residual=None, shape=None, out_shape=None):
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, (shape, shape), mode="nearest")
            att = torch.sigmoid(self.att_conv(torch.cat([x, residual], 1)))
            x = x * att[:, 0:1] + residual * att[:, 1:2]
        if x.shape[-1] != out_shape:
            x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
        return self.conv2(x), x


class ReviewFusion(nn.Module):
    """The ABF chain over student maps deepest first; returns fused maps shallowest first."""

    def __init__(self, in_channels, out_channels, shapes, out_shapes, max_mid_channel=512):
        super().__init__()
        n, mid = len(in_channels), min(max_mid_channel, in_channels[-1])
        self.shapes, self.out_shapes = list(shapes), list(out_shapes)
        # abfs[j] handles the j-th deepest map; only the deepest one does not fuse.
        self.abfs = nn.ModuleList(
            ABF(in_channels[n - 1 - j], mid, out_channels[n - 1 - j], j > 0) for j in range(n)
        )

    def forward(self, xs):
        out, residual = self.abfs[0](xs[0], out_shape=self.out_shapes[0])
        results = [out]
        for j in range(1, len(self.abfs)):
            out, residual = self.abfs[j](xs[j], residual, self.shapes[j], self.out_shapes[j])
            results.insert(0, out)
        return results


def hcl_loss(students, teachers) -> torch.Tensor:
    """ReviewKD's hierarchical context loss: per map, mse plus the mse of 4x4, 2x2, 1x1
    average pools (those smaller than the map) weighted 1/2, 1/4, 1/8, normalized."""
    total = 0.0
    for fs, ft in zip(students, teachers):
        loss, weight, norm = F.mse_loss(fs, ft), 1.0, 1.0
        for size in (4, 2, 1):
            if size >= fs.shape[2]:
                continue
            weight /= 2.0
            pooled = (F.adaptive_avg_pool2d(f, (size, size)) for f in (fs, ft))
            loss = loss + weight * F.mse_loss(*pooled)
            norm += weight
        total = total + loss / norm
    return total


def _review_inputs(s_feats, t_feats):
    """Student maps deepest first (pooled, stage3, stage2, stage1); the teacher's pre-ReLU
    stages 1-3 and pooled features, shallowest first."""
    as_map = lambda v: v[:, :, None, None]
    xs = [as_map(s_feats["pooled_feat"]), *s_feats["feats"][:0:-1]]
    return xs, [*t_feats["preact_feats"][1:], as_map(t_feats["pooled_feat"])]


class FeatureStep:
    """One training step of a feature method on fixed synthetic images; call it to step.

    Attributes: student, teacher, extra (nn.ModuleDict of the method's modules), opt,
    images, labels, pool (CRD's batches of "labels", "index", "contrast_idx"), last (the
    batch of the latest step).
    """

    def __init__(
        self, student_name: str, teacher_name: str, method: str, *, batch: int,
        image_size: int = 32, num_classes: int = 100, channels_last: bool = False,
        amp: bool = False, lr: float = 0.05, seed: int = 0, num_train: int = NUM_TRAIN,
        num_negatives: int | None = None, pool: int = 4, device: str = "cpu",
    ):  # fmt: skip
        if method not in METHODS:
            raise KeyError(f"no PyTorch feature step {method!r}; known: {METHODS}")
        torch.manual_seed(seed)
        self.method, self.hp = method, dict(HPARAMS[method])
        self.device = dev = torch.device(device)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        get = lambda name: torch_models.get_model(name, num_classes).to(dev, memory_format=fmt)
        self.student, self.teacher = get(student_name), get(teacher_name).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        shape = (batch, 3, image_size, image_size)
        self.images = torch.randn(shape).to(dev).contiguous(memory_format=fmt)
        self.labels = torch.randint(0, num_classes, (batch,)).to(dev)
        with torch.no_grad():  # shapes from inference-mode features (no BN statistics move)
            s_feats = self.student.eval().features(self.images[:1])[1]
            t_feats = self.teacher.features(self.images[:1])[1]
        self.student.train()
        self.extra = nn.ModuleDict(self._modules(s_feats, t_feats, num_train))
        self.extra.to(dev, memory_format=fmt)
        self.extra.train()
        params = [*self.student.parameters(), *self.extra.parameters()]
        self.opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
        self.autocast = (
            (lambda: torch.autocast(dev.type, dtype=torch.bfloat16))
            if amp
            else contextlib.nullcontext
        )
        self.pool, self.last, self._next = [], None, 0
        if method == "crd":
            k = num_negatives or self.hp["num_negatives"]
            self.pool = draw_crd_batches(batch, num_classes, num_train, k, pool, seed)
            self.pool = [{k: v.to(dev) for k, v in b.items()} for b in self.pool]

    def _modules(self, s_feats, t_feats, num_train) -> dict[str, nn.Module]:
        hp = self.hp
        if self.method == "fitnet":
            h = hp["hint_layer"]
            return {"conv_reg": ConvReg(s_feats["feats"][h].shape, t_feats["feats"][h].shape)}
        if self.method == "crd":
            dim = hp["feat_dim"]
            return {
                "embed_s": Embed(s_feats["pooled_feat"].shape[1], dim),
                "embed_t": Embed(t_feats["pooled_feat"].shape[1], dim),
                "memory": ContrastMemory(dim, num_train, hp["temperature"], hp["momentum"]),
            }
        xs, ts = _review_inputs(s_feats, t_feats)
        return {
            "fusion": ReviewFusion(
                in_channels=[x.shape[1] for x in xs[::-1]],
                out_channels=[t.shape[1] for t in ts],
                shapes=[x.shape[-1] for x in xs],
                out_shapes=[t.shape[-1] for t in ts[::-1]],
                max_mid_channel=hp["max_mid_channel"],
            )
        }

    def info(self) -> dict[str, Any]:
        """Student and extra learnable parameters, and the numbers kept in state (CRD)."""
        count = lambda ps: int(sum(p.numel() for p in ps))
        state = count(self.extra["memory"].buffers()) if self.method == "crd" else 0
        return {
            "student_params": count(self.student.parameters()),
            "extra_params": count(self.extra.parameters()),
            "state_numbers": state,
        }

    def loss(self, images, labels, index=None, contrast_idx=None, epoch: float = 1):
        """(total, parts) of one forward, parts as mdistiller's "loss_ce" and "loss_kd"."""
        hp = self.hp
        with self.autocast():
            s_logits, s_feats = self.student.features(images)
            with torch.no_grad():
                _, t_feats = self.teacher.features(images)
            if self.method == "fitnet":
                h = hp["hint_layer"]
                reg = self.extra["conv_reg"](s_feats["feats"][h])
                kd = hp["feat_weight"] * F.mse_loss(reg.float(), t_feats["feats"][h].float())
            elif self.method == "crd":
                v_s = self.extra["embed_s"](s_feats["pooled_feat"])
                v_t = self.extra["embed_t"](t_feats["pooled_feat"])
                out_s, out_t = self.extra["memory"](v_s, v_t, index, contrast_idx)
                n = self.extra["memory"].memory_s.shape[0]
                kd = hp["feat_weight"] * (nce_loss(out_s, n) + nce_loss(out_t, n))
            else:
                xs, ts = _review_inputs(s_feats, t_feats)
                fused = self.extra["fusion"](xs)
                kd = hcl_loss([f.float() for f in fused], [t.float() for t in ts])
                kd = min(epoch / hp["warmup_epochs"], 1.0) * hp["reviewkd_weight"] * kd
        parts = {"loss_ce": hp["ce_weight"] * F.cross_entropy(s_logits.float(), labels)}
        parts["loss_kd"] = kd
        return parts["loss_ce"] + parts["loss_kd"], parts

    def __call__(self, sync: bool = True) -> torch.Tensor:
        """One update (on the pool's next batch for CRD); the loss, detached. On CUDA it
        waits for the update's kernels unless `sync=False`."""
        batch = {"labels": self.labels}
        if self.pool:
            batch = self.pool[self._next % len(self.pool)]
            self._next += 1
        self.last = batch
        total, _ = self.loss(self.images, **batch)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        if sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return total.detach()


def draw_crd_batches(batch, num_classes, num_train, k, n_batches, seed=0) -> list[dict]:
    """`n_batches` CRD batches as mdistiller's sampling dataset yields them ("exact" mode):
    labels, sample indices (one permutation: distinct) and (B, K + 1) contrastive indices
    (the sample, then K samples of other classes, without replacement when enough)."""
    rng = np.random.default_rng(seed)
    train_labels = rng.integers(0, num_classes, num_train)
    order = rng.permutation(num_train)
    negatives = {}
    batches = []
    for b in range(n_batches):
        index = order.take(np.arange(b * batch, (b + 1) * batch), mode="wrap")
        rows = []
        for i in index:
            c = int(train_labels[i])
            if c not in negatives:
                negatives[c] = np.flatnonzero(train_labels != c)
            neg = rng.choice(negatives[c], k, replace=k > len(negatives[c]))
            rows.append(np.concatenate([[i], neg]))
        batches.append({
            "labels": torch.from_numpy(train_labels[index]),
            "index": torch.from_numpy(index),
            "contrast_idx": torch.from_numpy(np.stack(rows)),
        })  # fmt: skip
    return batches
