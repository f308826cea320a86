"""Every config file loads, and its models, distiller, optimizer and schedule build."""

from __future__ import annotations

import functools
import importlib
import pathlib

import jax
import jax.numpy as jnp
import pytest
from absl import flags
from ml_collections import config_flags

from configs import common
from luminet_jax import distillers, models, optim

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = sorted(
    p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in ("__init__", "common")
)
PAIR_FILES = [
    name for name in CONFIG_FILES if name.startswith("cifar100_") and name.count("_") >= 2
]
NUM_CLASSES = {"cifar100": 100, "imagenet2012": 1000, "cifar10_sample": 10}
SECTIONS = {
    "seed", "seeds", "dataset", "batch_size", "eval_batch_size", "num_epochs", "num_train_steps",
    "compute_dtype", "fast_conv", "compile_cache", "student", "teacher", "distiller", "optim",
    "schedule", "log_every_steps", "eval_every_epochs", "eval_every_steps", "ckpt_every_steps",
    "keep_checkpoints", "eval_teacher",
}  # fmt: skip

# file -> the config arguments it is checked with (pair files: every CIFAR method).
ARGS = {name: [f"method={m}" for m in common.CIFAR_METHODS] for name in PAIR_FILES}
ARGS.update(
    {
        "cifar100_teacher": ["resnet56", "model=wrn_40_2"],
        "imagenet_r34_r18": ["vanilla", "kd", "dkd", "luminet"],
        "imagenet_r50_mv1": ["vanilla", "kd", "dkd", "luminet"],
        "quickstart": ["teacher", "method=kd", "luminet,teacher_dir=/tmp/t", "dkd"],
    }
)


def _load(name: str, arg: str | None):
    return importlib.import_module(f"configs.{name}").get_config(arg)


# Detection configs (config.task = "detection") are checked in tests/detection_train_test.py.
DETECTION_FILES = [n for n in CONFIG_FILES if _load(n, None).get("task", "") == "detection"]
CASES = [
    (name, arg)
    for name in CONFIG_FILES
    if name not in DETECTION_FILES
    for arg in ARGS.get(name, [None])
]


@functools.cache
def _param_count(name: str, num_classes: int, size: int, kwargs: tuple = ()) -> int:
    """Builds the model abstractly (jax.eval_shape: no compute) and counts parameters."""
    model = models.get_model(name, num_classes=num_classes, axis_name="data", **dict(kwargs))
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


def test_every_file_is_checked():
    assert {"cifar100_res32x4_res8x4", "imagenet_r34_r18", "quickstart"} <= set(CONFIG_FILES)
    assert len(PAIR_FILES) >= 11, PAIR_FILES


@pytest.mark.parametrize("name,arg", CASES)
def test_config_builds(name, arg):
    config = _load(name, arg)
    assert set(config.keys()) == SECTIONS
    num_classes = NUM_CLASSES[config.dataset.name]
    size = config.dataset.image_size or 32
    assert config.batch_size > 0 and config.eval_batch_size > 0
    student = dict(config.student)
    s_name = student.pop("name")
    assert _param_count(s_name, num_classes, size, tuple(sorted(student.items()))) > 0
    distiller = distillers.get_distiller(**config.distiller)
    if getattr(distiller, "uses_teacher", True):
        t_kwargs = {k: v for k, v in config.teacher.items() if k not in ("name", "checkpoint")}
        for t_name in config.teacher.name.split(","):
            assert _param_count(t_name, num_classes, size, tuple(sorted(t_kwargs.items()))) > 0
    optim.make_optimizer(learning_rate=0.1, **config.optim)
    lr_fn = optim.make_schedule(**config.schedule, steps_per_epoch=10)
    assert float(lr_fn(0)) == pytest.approx(config.schedule.base_lr)


def test_vit_pair_sizes():
    config = _load("cifar100_deits_vitc", "kd")
    assert _param_count("deit_small", 100, 32, (("patch_size", 4),)) == pytest.approx(
        21.3e6, rel=0.01
    )
    assert _param_count(config.student.name, 100, 32) == pytest.approx(2.38e6, rel=0.02)


def test_pair_methods_follow_design_table():
    config = _load("cifar100_res32x4_res8x4", "luminet")
    assert dict(config.distiller) == dict(
        name="luminet",
        ce_weight=2.0,
        alpha=33.0,
        temperature=4.0,
        warmup_epochs=20,
        stats_groups=1,
    )
    assert config.schedule.decay_epochs == (151, 181, 211) and config.num_epochs == 240
    assert _load("cifar100_wrn40_2_shv1", "dkd").schedule.base_lr == 0.01
    assert _load("cifar100_vgg13_vgg8", "dkd").distiller.beta == 6.0
    assert _load("cifar100_res56_res20", "kd").distiller.kd_weight == 0.9
    # A bare word after ':' is the method.
    assert _load("cifar100_vgg13_vgg8", "kd").distiller.name == "kd"


def test_bad_arguments_fail():
    with pytest.raises(ValueError, match="nope"):
        _load("cifar100_res32x4_res8x4", "method=nope")
    with pytest.raises(ValueError, match="metod"):
        _load("cifar100_res32x4_res8x4", "metod=kd")


def _parse(*argv: str):
    argv = ["prog", *argv]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    flag_values(argv)
    return flag_values.config


def test_overrides_through_config_flags():
    path = CONFIG_DIR / "cifar100_res32x4_res8x4.py"
    config = _parse(
        f"--config={path}:method=kd",
        "--config.batch_size=128",
        "--config.teacher.checkpoint=/x/t.npz",
        "--config.distiller.temperature=2",
    )
    assert config.batch_size == 128 and config.teacher.checkpoint == "/x/t.npz"
    assert config.distiller.name == "kd" and config.distiller.temperature == 2.0


@pytest.mark.parametrize(
    "override", ["--config.distiller.temprature=3", "--config.batchsize=3", "--config.optim.lr=1"]
)
def test_misspelled_override_fails(override):
    path = CONFIG_DIR / "cifar100_res32x4_res8x4.py"
    with pytest.raises(Exception, match="temprature|batchsize|lr"):
        _parse(f"--config={path}:method=kd", override)


def test_misspelled_section_key_fails_at_build():
    config = _load("cifar100_res32x4_res8x4", "kd")
    with config.unlocked():
        config.distiller.temprature = 3.0
        config.optim.momentun = 0.9
    with pytest.raises(TypeError, match="temprature"):
        distillers.get_distiller(**config.distiller)
    with pytest.raises(TypeError, match="momentun"):
        optim.make_optimizer(learning_rate=0.1, **config.optim)
