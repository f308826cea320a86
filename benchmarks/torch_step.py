"""The PyTorch reference distillation step (mdistiller's recipe), for timing against JAX.

One step: the teacher's forward in eval mode without gradients, the student's forward in
train mode, the distillation loss, backward, and SGD (momentum 0.9, weight decay 5e-4,
coupled). Losses follow DESIGN.md section 1: KD, DKD, LumiNet and vanilla CE; the feature
methods FitNet, CRD and ReviewKD are benchmarks/torch_feature_step.py's, built by the same
`make_step`.
Options: the device ("cpu", "cuda", "cuda:1"), channels_last memory format and bfloat16
autocast (AMP; bfloat16 needs no GradScaler, unlike float16). On CUDA the step synchronizes
the device before it returns (`sync=False` leaves the kernels queued, for throughput timing:
see `synchronize`); TF32 is whatever `torch.backends` says (`tf32_flags` reports it).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

try:  # run as `python benchmarks/step.py` (repo root on sys.path) or from benchmarks/
    from benchmarks import torch_feature_step, torch_models
except ImportError:  # pragma: no cover
    import torch_feature_step  # type: ignore[no-redef]
    import torch_models  # type: ignore[no-redef]

# The logit methods' resnet32x4 -> resnet8x4 recipe (DESIGN.md section 3): the pair
# config's (benchmarks/step.py's HPARAMS).
HPARAMS = {m: torch_feature_step.jax_step.HPARAMS[m] for m in ("vanilla", "kd", "dkd", "luminet")}


def _kl(log_p_t: torch.Tensor, log_p_s: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) summed over classes, averaged over the batch (batchmean)."""
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean()


def kd_loss(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    return _kl(F.log_softmax(t / temperature, 1), F.log_softmax(s / temperature, 1)) * (
        temperature**2
    )


def perception(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """LumiNet: per-class standardization over the batch (population variance)."""
    mean = z.mean(0, keepdim=True)
    var = ((z - mean) ** 2).mean(0, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps)


def luminet_loss(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    hs, ht = perception(s), perception(t)
    return _kl(F.log_softmax(ht / temperature, 1), F.log_softmax(hs / temperature, 1))


def dkd_loss(s, t, labels, alpha: float, beta: float, temperature: float) -> torch.Tensor:
    """Decoupled KD (Zhao et al. 2022), with log-probabilities via logsumexp."""
    mask = F.one_hot(labels, s.shape[1]).bool()
    s_t, t_t = s / temperature, t / temperature

    def binary_log_probs(z):
        log_p = F.log_softmax(z, 1)
        log_target = (log_p * mask).sum(1, keepdim=True)
        log_other = torch.logsumexp(log_p.masked_fill(mask, -float("inf")), 1, keepdim=True)
        return torch.cat([log_target, log_other], 1)

    tckd = _kl(binary_log_probs(t_t), binary_log_probs(s_t))
    nckd = _kl(F.log_softmax(t_t - 1000.0 * mask, 1), F.log_softmax(s_t - 1000.0 * mask, 1))
    return (alpha * tckd + beta * nckd) * temperature**2


def distill_loss(method: str, s, t, labels, epoch: int, hparams=None) -> torch.Tensor:
    """The total loss of `method` on float32 logits (s: student, t: teacher or None);
    `hparams` replaces HPARAMS[method] (another pair's recipe)."""
    hp = HPARAMS[method] if hparams is None else hparams
    ce = F.cross_entropy(s, labels)
    if method == "vanilla":
        return hp.get("ce_weight", 1.0) * ce  # the distiller's default weight
    if method == "kd":
        return hp["ce_weight"] * ce + hp["kd_weight"] * kd_loss(s, t, hp["temperature"])
    warm = min(epoch / hp["warmup_epochs"], 1.0)
    if method == "dkd":
        kd = dkd_loss(s, t, labels, hp["alpha"], hp["beta"], hp["temperature"])
        return hp["ce_weight"] * ce + warm * kd
    if method == "luminet":
        kd = hp["alpha"] ** 2 * luminet_loss(s, t, hp["temperature"])
        return hp["ce_weight"] * ce + warm * kd
    raise KeyError(f"unknown method {method!r}; known: {sorted(HPARAMS)}")


def synchronize(device: str | torch.device = "cpu") -> None:
    """Waits for the device's queued kernels (a no-op on the CPU, which runs eagerly)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tf32_flags() -> dict[str, Any]:
    """PyTorch's TF32 switches (float32 matmuls and cuDNN convolutions on Ampere and later)."""
    return {
        "torch_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "torch_cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "torch_float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def autocast_context(device: torch.device, amp: bool) -> Callable[[], Any]:
    """bfloat16 autocast on `device`'s type when `amp`, else a null context."""
    if not amp:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def make_step(
    student_name: str,
    teacher_name: str,
    method: str,
    *,
    batch: int,
    image_size: int = 32,
    num_classes: int = 100,
    channels_last: bool = False,
    amp: bool = False,
    lr: float = 0.05,
    seed: int = 0,
    device: str = "cpu",
    hparams: dict[str, Any] | None = None,
    **feature_kw: Any,
) -> tuple[Callable[..., Any], dict[str, Any]]:
    """A no-argument callable running one training step on a fixed synthetic batch.

    Args:
      student_name: a `torch_models` name (e.g. "resnet8x4").
      teacher_name: the teacher's name (ignored for "vanilla").
      method: "vanilla", "kd", "dkd", "luminet", or a torch_feature_step method ("fitnet",
        "crd", "reviewkd").
      batch: batch size.
      image_size: input height and width.
      num_classes: classifier size.
      channels_last: use torch.channels_last for models and inputs.
      amp: bfloat16 autocast for the forward passes (losses in float32).
      lr: SGD learning rate.
      seed: torch seed for weights and data.
      device: where the models, optimizer state and batch live ("cpu", "cuda", ...).
      hparams: the logit method's hyperparameters (default HPARAMS[method], the
        resnet32x4 -> resnet8x4 recipe).
      **feature_kw: for the feature methods, torch_feature_step.FeatureStep's options
        (num_train, num_negatives, pool).

    Returns:
      (step, info): `step(sync=True)` runs one update and returns the loss tensor; on a
      CUDA device it first waits for the update's kernels unless `sync=False`. info has
      "student_params", "extra_params" (0: logit methods add none) and "state_numbers"
      (CRD's memories and its two Z; else 0).
    """
    if method in torch_feature_step.METHODS:
        step = torch_feature_step.FeatureStep(
            student_name, teacher_name, method, batch=batch, image_size=image_size,
            num_classes=num_classes, channels_last=channels_last, amp=amp, lr=lr, seed=seed,
            device=device, **feature_kw,
        )  # fmt: skip
        return step, step.info()
    if feature_kw:
        raise TypeError(f"{method!r} takes no feature-step options {sorted(feature_kw)}")
    torch.manual_seed(seed)
    dev = torch.device(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    get = lambda name: torch_models.get_model(name, num_classes).to(dev, memory_format=fmt)
    student = get(student_name).train()
    teacher = None
    if method != "vanilla":
        teacher = get(teacher_name).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(batch, 3, image_size, image_size)
    images = images.to(dev).contiguous(memory_format=fmt)
    labels = torch.randint(0, num_classes, (batch,)).to(dev)
    autocast = autocast_context(dev, amp)

    def step(sync: bool = True):
        with autocast():
            t_logits = None
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(images).float()
            s_logits = student(images).float()
        loss = distill_loss(method, s_logits, t_logits, labels, epoch=1, hparams=hparams)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sync:
            synchronize(dev)
        return loss.detach()

    n_student = sum(p.numel() for p in student.parameters())
    info = {"student_params": n_student, "extra_params": 0, "state_numbers": 0}
    return step, info


def torch_device(name: str) -> str:
    """ "auto" -> "cuda" where PyTorch sees a GPU, else "cpu"; other names unchanged."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def build_variants(args, methods, hparams_for) -> dict:
    """benchmarks/step.py's PyTorch variants {"torch/<method>": (step, info)}, warmed up;
    `hparams_for(method, pair)` gives the logit methods' recipe."""
    teacher_name, student_name = args.pair.split(":")
    device = torch_device(args.torch_device)
    # The CPUs this process may use (taskset, a container's cpuset), not the host's count:
    # more threads than CPUs oversubscribe them and slow PyTorch's step down.
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    torch.set_num_threads(len(usable) if usable else os.cpu_count() or 1)
    variants = {}
    for method in methods:
        logit = method in HPARAMS
        step, info = make_step(
            student_name,
            teacher_name,
            method,
            batch=args.batch,
            image_size=args.image_size,
            num_classes=args.num_classes,
            channels_last=args.channels_last,
            amp=args.dtype == "bfloat16",
            device=device,
            hparams=hparams_for(method, args.pair) if logit else None,
        )
        # Warm up outside the rounds (allocator and oneDNN primitive caches).
        t0 = time.perf_counter()
        for _ in range(2):
            step()
        info.update(
            framework="torch",
            method=method,
            fast_conv="n/a",
            compile_s=time.perf_counter() - t0,
            device=device,
        )
        variants[f"torch/{method}"] = (step, info)
    return variants
