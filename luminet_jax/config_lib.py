"""Shared pieces of the config files (`configs/*.py`): argument parsing and base recipes.

The config files import it as `from luminet_jax import config_lib as common`, so they load
from a checkout and from an installed package alike.

Every config has the same top-level sections (read by `luminet_jax/train.py` and its task,
`luminet_jax/tasks/`):

    task              absent or "classification" (the sections below), or "detection"
                      (`detection()` below; dataset/student/teacher as in
                      luminet_jax/tasks/detection.py)
    seed              int
    seeds             "" (one run with `seed`) or "0,1,2": one run per seed in one job,
                      written to W/seed{k}/ as `seed=k` would write W/
    dataset           name, data_dir, device_resident, augment, image_size
    batch_size        GLOBAL batch (all processes and devices together)
    eval_batch_size   GLOBAL eval batch (the last one is padded and masked)
    num_epochs        training length; num_train_steps > 0 overrides it (tests, smoke runs)
    compute_dtype     "" (the inputs' dtype, float32), "auto" (bfloat16 on GPU/TPU, float32
                      on CPU; the ImageNet and detection recipes) or "bfloat16" etc., for
                      both models (parameters, optimizer and losses stay float32)
    fast_conv         "" (off), "pointwise" or "all": luminet_jax.fast_conv on CPU
    compile_cache     "auto" (the user's cache folder), a folder, or "off": JAX's
                      persistent compilation cache (read by main only)
    student           get_model kwargs: name (+ model fields); num_classes/dtype/axis_name
                      are filled in by the trainer
    teacher           name and checkpoint (a converted orbax dir, a PyTorch-keyed .npz or .pth,
                      an earlier run's workdir, or zoo:NAME, a published teacher fetched by
                      luminet_jax.teachers); several comma-separated names and as many
                      comma-separated checkpoints make an ensemble (mean of their logits);
                      further keys are model fields (e.g. patch_size); unused by vanilla
    distiller         get_distiller kwargs, including name
    optim             make_optimizer kwargs minus learning_rate
    schedule          make_schedule kwargs minus steps_per_epoch (decay_epochs, or
                      decay_steps + warmup_steps for iteration-based recipes)
    log_every_steps, eval_every_epochs (eval_every_steps > 0 overrides it),
    ckpt_every_steps, keep_checkpoints, eval_teacher

Section keys are the keyword arguments of the function each section feeds, so a
misspelled key fails at start-up with a TypeError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ml_collections


# The logit rows of the paper's tables, and the methods every CIFAR pair file defines (keys
# of its method table, `cifar_methods`).
PAPER_LOGIT_METHODS = ("vanilla", "kd", "dkd", "luminet")
CIFAR_METHODS = (*PAPER_LOGIT_METHODS, "kd_ls", "dkd_ls")


def _convert(text: str, default: Any) -> Any:
    """Converts a command-line string to the type of `default`."""
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"Cannot parse {text!r} as a bool")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
    """Parses the string after `:` in `--config file.py:ARG` (big_vision's convention).

    ARG is a comma-separated list of `key=value`; a bare value (no `=`) sets the first key
    of `spec`, so `file.py:luminet` means `file.py:method=luminet`. Values take the type of
    the defaults in `spec`; unknown keys raise.

    Args:
      arg: the string after `:`, or None / "" for all defaults.
      **spec: the accepted keys and their defaults, in order.

    Returns:
      A ConfigDict with one entry per key of `spec`.
    """
    import ml_collections  # noqa: PLC0415  (method tables import without it)

    out = dict(spec)
    first = next(iter(spec), None)
    for token in (arg or "").split(","):
        token = token.strip()
        if not token:
            continue
        key, sep, value = token.partition("=")
        if not sep:
            key, value = first, token
        key = key.strip()
        if key not in spec:
            raise ValueError(f"Unknown config argument {key!r}; accepted: {sorted(spec)}")
        out[key] = _convert(value.strip(), spec[key])
    return ml_collections.ConfigDict(out)


def base(**overrides: Any) -> ml_collections.ConfigDict:
    """All sections with neutral defaults; the recipe helpers below fill them in."""
    import ml_collections  # noqa: PLC0415  (method tables import without it)

    config = ml_collections.ConfigDict()
    config.seed = 0
    config.seeds = ""  # "0,1,2": one independent run per seed in one job (W/seed{k}/)
    config.dataset = dict(
        name="cifar100",
        data_dir="",  # "" = the data layer's default (TFDS dir, or the shipped sample).
        device_resident=True,  # hold the train set on the devices, augment in jit
        augment="cifar",
        image_size=0,  # 0 = the dataset's native size
    )
    config.batch_size = 64
    config.eval_batch_size = 1024
    config.num_epochs = 240
    config.num_train_steps = -1  # > 0: stop after this many steps (tests, smoke runs)
    config.compute_dtype = ""  # "" = float32 parameters and compute; "bfloat16" on GPU/TPU
    config.fast_conv = ""  # CPU only: "pointwise" or "all" = conv weight grads as matmuls
    # JAX's persistent compilation cache: "auto" ($LUMINET_COMPILE_CACHE, else
    # ~/.cache/luminet_jax/jax), a folder, or "off".
    config.compile_cache = "auto"
    config.student = dict(name="resnet8")
    config.teacher = dict(name="", checkpoint="")
    config.distiller = dict(name="vanilla")
    config.optim = dict(momentum=0.9, weight_decay=5e-4, nesterov=False)
    config.schedule = dict(base_lr=0.05, decay_epochs=(151, 181, 211), decay_rate=0.1)
    config.log_every_steps = 100
    config.eval_every_epochs = 1
    config.eval_every_steps = 0  # > 0 overrides eval_every_epochs
    config.ckpt_every_steps = 5000
    config.keep_checkpoints = 3
    config.eval_teacher = True  # evaluate the loaded teacher once at start (teacher_top1)
    config.update(overrides)
    return config


def cifar_methods(
    *, luminet: dict[str, float], dkd_beta: float, warmup_epochs: int = 20
) -> dict[str, dict[str, Any]]:
    """The distiller table of a CIFAR-100 pair (DESIGN.md section 3).

    Args:
      luminet: the pair's ce_weight, alpha and temperature for LumiNet.
      dkd_beta: DKD's beta for the pair.
      warmup_epochs: LumiNet's and DKD's linear ramp (20 on CIFAR).

    Returns:
      method name -> get_distiller kwargs.
    """
    return {
        "vanilla": dict(name="vanilla"),
        "kd": dict(name="kd", ce_weight=0.1, kd_weight=0.9, temperature=4.0),
        "dkd": dict(
            name="dkd",
            ce_weight=1.0,
            alpha=1.0,
            beta=dkd_beta,
            temperature=4.0,
            warmup_epochs=warmup_epochs,
        ),
        # stats_groups=1: statistics over the global batch (DESIGN.md section 1); set it to
        # the reference's GPU count to emulate nn.DataParallel's per-replica statistics.
        "luminet": dict(name="luminet", **luminet, warmup_epochs=warmup_epochs, stats_groups=1),
        # Logit standardization (Sun et al. 2024) is not in DESIGN.md's table. Chosen: their
        # CIFAR-100 KD setting, base T 2 with the KD weight raised to 9 (CE 0.1), since
        # standardized logits have unit scale; DKD+LS keeps the pair's DKD alpha/beta with T 2.
        "kd_ls": dict(name="kd_ls", ce_weight=0.1, kd_weight=9.0, temperature=2.0),
        "dkd_ls": dict(
            name="dkd_ls",
            ce_weight=1.0,
            alpha=1.0,
            beta=dkd_beta,
            temperature=2.0,
            warmup_epochs=warmup_epochs,
        ),
    }


def cifar100_pair(
    arg: str | None,
    *,
    teacher: str,
    student: str,
    methods: dict[str, dict[str, Any]],
    base_lr: float = 0.05,
) -> ml_collections.ConfigDict:
    """A CIFAR-100 distillation config (DESIGN.md section 3 recipe).

    Args:
      arg: the config argument: `method=NAME` (or a bare NAME), default luminet.
      teacher: teacher model name.
      student: student model name.
      methods: method -> distiller kwargs, as returned by `cifar_methods`.
      base_lr: 0.05, or 0.01 for ShuffleNet/MobileNet students.

    Returns:
      The locked-ready ConfigDict.
    """
    arg = parse_arg(arg, method="luminet")
    if arg.method not in methods:
        raise ValueError(f"Unknown method {arg.method!r}; this file defines {sorted(methods)}")
    config = base()
    config.student = dict(name=student)
    # The published teacher from the teacher zoo (luminet_jax/teachers.py), fetched when a
    # run that uses it starts; --config.teacher.checkpoint=PATH gives another one.
    config.teacher = dict(name=teacher, checkpoint=f"zoo:{teacher}")
    config.distiller = dict(methods[arg.method])
    config.schedule.base_lr = base_lr
    return config


def imagenet(**overrides: Any) -> ml_collections.ConfigDict:
    """ImageNet-1k recipe (DESIGN.md section 3): 100 epochs, decay at 30/60/90, wd 1e-4."""
    config = base()
    config.compute_dtype = "auto"  # bfloat16 on GPU/TPU, float32 on CPU
    config.dataset = dict(
        name="imagenet2012",
        data_dir="",
        device_resident=False,  # streams through tf.data
        augment="imagenet",
        image_size=224,
    )
    config.batch_size = 512
    config.eval_batch_size = 1024
    config.num_epochs = 100
    config.optim = dict(momentum=0.9, weight_decay=1e-4, nesterov=False)
    # mdistiller decays when epoch > stage (1-based): stages 30/60/90 = starts of 31/61/91.
    config.schedule = dict(base_lr=0.2, decay_epochs=(31, 61, 91), decay_rate=0.1)
    config.log_every_steps = 500
    config.ckpt_every_steps = 2500
    config.update(overrides)
    return config


# Detection (config.task = "detection"; luminet_jax/tasks/detection.py reads these sections).
def detection(**overrides: Any) -> ml_collections.ConfigDict:
    """Faster R-CNN + FPN on COCO, detectron2's / mdistiller's recipe (DESIGN.md section 7).

    Batch 8, lr 0.01, 180k iterations with decays at 120k and 160k, 1000-iteration linear
    warmup (factor 0.001), SGD momentum 0.9, weight decay 1e-4; train short side 640..800
    (step 32) + flip, max 1333; test short side 800. Train batches are padded to one of four
    aspect-ratio buckets (`pad_sizes`, `detection.data.make_train_iter`; one compilation of the
    train step each), eval batches to 1344 x 1344 (`pad_size`). A dataset of other image
    sizes sets its own (`pad_sizes=()`: every batch padded to `pad_size`).
    """
    config = base()
    config.compute_dtype = "auto"  # bfloat16 on GPU/TPU, float32 on CPU
    config.task = "detection"
    config.dataset = dict(
        name="coco2017",
        data_dir="",
        pad_size=(1344, 1344),  # eval (and train without pad_sizes): multiples of 32, >= max_size
        # Train: landscape images up to 4:3 (w/h <= 1.36: 800 x 1067 at short side 800) and
        # wider ones, portrait likewise; each image in the smallest that holds it.
        pad_sizes=((800, 1088), (800, 1344), (1088, 800), (1344, 800)),
        max_gt=100,  # ground-truth slots per image (COCO: 93 at most after crowd removal)
        short_sides=tuple(range(640, 801, 32)),
        max_size=1333,
        test_short_side=800,
        test_max_size=1333,
        flip=True,
        filter_empty=True,
        mean=(123.675, 116.28, 103.53),  # RGB in 0..255 (torchvision ImageNet backbones)
        std=(58.395, 57.12, 57.375),
        bgr=False,
        num_workers=8,
    )
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_epochs = 0
    config.num_train_steps = 180_000
    config.student = dict(name="faster_rcnn_r18_fpn", backbone_checkpoint="")
    config.teacher = dict(name="faster_rcnn_r101_fpn", checkpoint="")
    config.distiller = dict(name="vanilla")
    config.optim = dict(momentum=0.9, weight_decay=1e-4, nesterov=False, clip_grad_norm=0.0)
    config.schedule = dict(
        base_lr=0.01,
        decay_steps=(120_000, 160_000),
        decay_rate=0.1,
        warmup_steps=1000,
        warmup_factor=0.001,
    )
    config.log_every_steps = 20
    config.eval_every_epochs = 0
    config.eval_every_steps = 10_000
    config.ckpt_every_steps = 5000
    config.eval_teacher = False
    config.update(overrides)
    return config


def detection_methods(*, luminet: dict[str, float]) -> dict[str, dict[str, Any]]:
    """The distiller table of a detection pair: ce_weight 0 everywhere (the RoI head's
    cross-entropy is already the detector's loss), no warmup (warmup_epochs=1: full weight
    from the first epoch).

    DKD: mdistiller's detection config (alpha 1, beta 0.25, T 1). KD: weight 1 at T 1 (the
    temperature of the DKD and ImageNet recipes; no published detection KD setting here).
    LumiNet: `luminet`, the caller's (no detection hyperparameters were published).
    """
    return {
        "vanilla": dict(name="vanilla"),
        "kd": dict(name="kd", ce_weight=0.0, kd_weight=1.0, temperature=1.0),
        "dkd": dict(
            name="dkd", ce_weight=0.0, alpha=1.0, beta=0.25, temperature=1.0, warmup_epochs=1
        ),
        "luminet": dict(name="luminet", ce_weight=0.0, **luminet, warmup_epochs=1, stats_groups=1),
    }
