"""Quickstart: the shipped 4,000-image CIFAR-10 sample (3,000 train / 1,000 test), CPU-sized.

`python -m luminet_jax.quickstart` runs all three steps below and prints the table. By hand:

python -m luminet_jax.main --config configs/quickstart.py:teacher --workdir /tmp/qs/teacher
python -m luminet_jax.main --config configs/quickstart.py:method=kd,teacher_dir=/tmp/qs/teacher \
    --workdir /tmp/qs/kd
python -m luminet_jax.main \
    --config configs/quickstart.py:method=luminet,teacher_dir=/tmp/qs/teacher --workdir /tmp/qs/lumi

Expected top-1 on the 1,000 test images (6 epochs on 3,000 images, seed 0; measured on a
2-core CPU, 2026-12-06): teacher resnet14 0.404, resnet8 KD 0.371, resnet8 LumiNet 0.438.
With so little data and training, expect a few points of spread between machines.
"""

from luminet_jax import config_lib as common

TEACHER = "resnet14"
STUDENT = "resnet8"
# What `main` suggests when a distillation run is started without a teacher.
TEACHER_HINT = (
    "train the quickstart teacher first: {prog} --config quickstart:teacher "
    "--workdir /tmp/qs/teacher, then add --config.teacher.checkpoint=/tmp/qs/teacher "
    "(luminet-quickstart does both)."
)

# Short-run settings for 10 classes. LumiNet: LumiNet's default ce 2 / T 4 with alpha
# lowered from 31 (tuned for 100 classes over 240 epochs) and a 1-epoch ramp.
METHODS = {
    "vanilla": dict(name="vanilla"),
    "kd": dict(name="kd", ce_weight=0.1, kd_weight=0.9, temperature=4.0),
    "dkd": dict(name="dkd", ce_weight=1.0, alpha=1.0, beta=2.0, temperature=4.0, warmup_epochs=2),
    "luminet": dict(
        name="luminet", ce_weight=2.0, alpha=8.0, temperature=4.0, warmup_epochs=2, stats_groups=1
    ),
}


def get_config(arg=None):
    """`arg`: `method=NAME` (vanilla, kd, dkd, luminet) or `teacher`; `teacher_dir=DIR`."""
    arg = common.parse_arg(arg, method="luminet", teacher_dir="", epochs=6)
    config = common.base()
    config.dataset = dict(
        name="cifar10_sample", data_dir="", device_resident=True, augment="cifar", image_size=0
    )
    config.batch_size = 64
    config.eval_batch_size = 200
    config.num_epochs = arg.epochs
    config.schedule = dict(base_lr=0.05, decay_epochs=(arg.epochs,), decay_rate=0.1)
    config.log_every_steps = 10
    config.eval_every_epochs = 1
    config.ckpt_every_steps = 1000
    config.keep_checkpoints = 1
    if arg.method == "teacher":  # vanilla training of the teacher model
        config.student = dict(name=TEACHER)
        config.teacher = dict(name="", checkpoint="")
        config.distiller = dict(METHODS["vanilla"])
        return config
    if arg.method not in METHODS:
        raise ValueError(f"Unknown method {arg.method!r}; known: teacher, {sorted(METHODS)}")
    config.student = dict(name=STUDENT)
    config.teacher = dict(name=TEACHER, checkpoint=arg.teacher_dir)
    config.distiller = dict(METHODS[arg.method])
    return config
