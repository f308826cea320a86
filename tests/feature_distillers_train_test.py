"""Feature-based distillers end to end through `train.train_and_evaluate` (8 fake devices).

One tiny resnet8 teacher trained for a few steps in a module fixture; per method a 4-step
resnet8 student run that checkpoints at step 2, and a resume of that run from step 2, which
must equal the uninterrupted run bit for bit in the extra params and extra state.
"""

from __future__ import annotations

import pathlib
import shutil

import chex
import image_data
import jax
import numpy as np
import pytest

from configs import quickstart
from luminet_jax import checkpoint, metrics_io, train

pytestmark = pytest.mark.integration  # trains through the loop / subprocesses

# resnet8 on 8x8 images: stem/stage1 8x8x16, stage2 4x4x32, stage3 2x2x64, pooled 64.
HPARAMS = {
    "fitnet": {},
    "at": {},
    "rkd": {},
    "pkt": {},
    "sp": {},
    "vid": {},
    "nst": {},
    "kdsvd": {},
    "ofd": {},
    "reviewkd": dict(
        reviewkd_weight=5.0,
        warmup_epochs=2,
        in_channels=(16, 32, 64, 64),
        out_channels=(16, 32, 64, 64),
        shapes=(1, 2, 4, 8),
        out_shapes=(1, 2, 4, 8),
    ),  # fmt: skip
}
# All are marked slow (about 50 s for OFD, 95-130 s for the others on a loaded 2-core
# machine; all ten passed there with -m slow). The default suite keeps the contract's
# pieces (tests/steps_extra_test.py: extra params trained with the student, state carried).
DEFAULT: set[str] = set()


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
    """The resumed run compiles the programs of the full run: reuse them (see train_test)."""
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    yield


def _config(method: str, *, steps: int, teacher_dir: str, data: str, **hparams):
    """resnet8 -> resnet8, global batch 16, 2 steps per epoch, checkpoints every 2 steps."""
    config = quickstart.get_config(f"method=kd,teacher_dir={teacher_dir}")
    config.dataset.name = f"image_folder:{data}"
    config.schedule.base_lr = 0.1
    config.student.name = "resnet8"
    config.teacher.name = "resnet8"
    config.distiller = dict(name=method, **hparams)
    config.batch_size = 16
    config.eval_batch_size = 32
    config.num_train_steps = steps
    config.log_every_steps = 1
    config.ckpt_every_steps = 2
    config.keep_checkpoints = 3
    config.eval_teacher = False
    return config


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory) -> str:
    """4 colour classes, 8x8: 32 training images (2 steps of 16) and 32 test images."""
    return image_data.colour_folder(tmp_path_factory.mktemp("colour"), train=8, test=8)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, colour_data) -> str:
    workdir = str(tmp_path_factory.mktemp("teacher"))
    config = quickstart.get_config("teacher")
    config.dataset.name = f"image_folder:{colour_data}"
    config.student.name = "resnet8"
    config.batch_size, config.eval_batch_size, config.num_train_steps = 16, 32, 4
    config.ckpt_every_steps = 4
    train.train_and_evaluate(config, workdir)
    return workdir


def _params(name):
    marks = () if name in DEFAULT else (pytest.mark.slow,)
    return pytest.param(name, marks=marks)


@pytest.mark.parametrize("name", [_params(n) for n in HPARAMS])
def test_trains_and_resumes_exactly(name, teacher_dir, colour_data, tmp_path):
    full_dir = tmp_path / "full"
    config = _config(name, steps=4, teacher_dir=teacher_dir, data=colour_data, **HPARAMS[name])
    full = train.train_and_evaluate(config, str(full_dir))
    state = full["state"]
    assert int(state.step) == 4
    losses = [r["train/loss"] for r in metrics_io.read_metrics(str(full_dir)) if "train/loss" in r]
    kd = [r["train/loss_kd"] for r in metrics_io.read_metrics(str(full_dir)) if "train/loss" in r]
    assert len(losses) == 4 and np.all(np.isfinite(losses)) and np.all(np.isfinite(kd))
    assert kd[-1] != 0.0

    # The state at the step-2 checkpoint, then the run resumed from it.
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(full_dir, resumed_dir)
    shutil.rmtree(pathlib.Path(resumed_dir) / "ckpt" / "4")
    mid = checkpoint.Checkpointer(str(resumed_dir)).restore_or(state)
    assert int(mid.step) == 2
    if jax.tree.leaves(state.extra_params):  # The extra params train with the student.
        moved = jax.tree.map(
            lambda a, b: bool(np.any(a != b)), mid.extra_params, state.extra_params
        )
        assert all(jax.tree.leaves(moved)), moved
    resumed = train.train_and_evaluate(config, str(resumed_dir))["state"]
    assert int(resumed.step) == 4
    chex.assert_trees_all_equal(resumed.extra_params, state.extra_params)
    chex.assert_trees_all_equal(resumed.extra_state, state.extra_state)
    chex.assert_trees_all_equal(resumed.params, state.params)
