"""End-to-end `train.train_and_evaluate`, 8 fake CPU devices.

Tiny runs: resnet8, global batch 16, a few steps, from configs/quickstart.py with overrides,
on the shipped CIFAR-10 sample or (where a test asserts that training lowers the loss) on
a generated colour-class folder that resnet8 fits in a few dozen steps: a trend over a few
noisy steps on real images differs between machines, a fall by half on separable data
does not.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re
import shutil
import signal

import chex
import image_data
import jax
import numpy as np
import pytest

from configs import quickstart
from luminet_jax import checkpoint, distillers, metrics_io, sharding, train
from luminet_jax.tasks import classification

pytestmark = pytest.mark.integration  # trains through the loop / subprocesses


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
    """Runs of one config compile the same programs: let later runs reuse them.

    Only takes effect when this module compiles first in the session (JAX reads the
    setting once); otherwise it changes nothing.
    """
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    yield


def _config(
    method: str = "teacher", *, steps: int = 4, teacher_dir: str = "", data: str = "", **overrides
):
    """The quickstart config shrunk to resnet8, batch 16 and `steps` steps (lr 0.1).

    `data`: an image folder to train on instead of the CIFAR-10 sample.
    """
    config = quickstart.get_config(f"method={method},teacher_dir={teacher_dir}")
    if data:
        config.dataset.name = f"image_folder:{data}"
    config.schedule.base_lr = 0.1
    config.student.name = "resnet8"
    if method != "teacher":
        config.teacher.name = "resnet8"
    config.batch_size = 16
    config.eval_batch_size = 64 if data else 200
    config.num_train_steps = steps
    config.log_every_steps = 1
    config.ckpt_every_steps = 1000
    config.keep_checkpoints = 3
    config.eval_teacher = True
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            config[section][field] = value
        else:
            config[key] = value
    return config


def _losses(workdir, key="train/loss") -> list[float]:
    return [r[key] for r in metrics_io.read_metrics(workdir) if key in r]


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory) -> str:
    """4 colour classes, 8x8: 64 training and 64 test images."""
    return image_data.colour_folder(tmp_path_factory.mktemp("colour"), train=16, test=16)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, colour_data):
    workdir = str(tmp_path_factory.mktemp("teacher"))
    config = _config(steps=30, ckpt_every_steps=15, data=colour_data)
    return workdir, train.train_and_evaluate(config, workdir)


def test_teacher_run_writes_metrics_and_checkpoints(teacher_run):
    workdir, result = teacher_run
    assert result["steps"] == 30 and int(result["state"].step) == 30
    losses = _losses(workdir)
    assert len(losses) == 30 and all(np.isfinite(losses))
    # It learns: measured 2.3 -> ~0.01 over these 30 steps; halving is a wide margin.
    assert np.mean(losses[-8:]) < 0.5 * np.mean(losses[:8]), losses
    records = metrics_io.read_metrics(workdir)
    evals = [r for r in records if "eval/top1" in r]
    assert evals[-1]["step"] == 30 and 0.0 <= evals[-1]["eval/top1"] <= 1.0
    assert result["last_top1"] == pytest.approx(evals[-1]["eval/top1"])
    assert any("summary/best_top1" in r for r in records)
    assert os.path.exists(os.path.join(workdir, "summary.json"))
    assert checkpoint.Checkpointer(workdir).all_steps() == [15, 30]
    assert np.isnan(result["teacher_top1"])  # vanilla: no teacher loaded


def test_metric_records_after_a_resume(tmp_path):
    writer = metrics_io.MetricWriter(str(tmp_path), tensorboard=False)
    for step, top1 in [(10, 0.5), (20, 0.7), (30, 0.2), (20, 0.6), (30, 0.4)]:
        writer.write(step, {"eval/top1": np.float32(top1)})  # steps 20-30 rerun after resume
    writer.write(30, {"train/loss": float("nan")})
    records = metrics_io.read_metrics(str(tmp_path))
    assert len(records) == 6 and np.isnan(records[-1]["train/loss"])
    best, last = metrics_io.best_and_last(records)
    assert best == pytest.approx(0.6) and last == pytest.approx(0.4)


def test_luminet_student_from_teacher_workdir(teacher_run, colour_data, tmp_path):
    teacher_dir, teacher_result = teacher_run
    config = _config("luminet", steps=20, teacher_dir=teacher_dir, data=colour_data)
    result = train.train_and_evaluate(config, str(tmp_path))
    # The teacher evaluated at start is exactly the teacher run's final model.
    assert result["teacher_top1"] == pytest.approx(teacher_result["last_top1"], abs=1e-6)
    records = metrics_io.read_metrics(str(tmp_path))
    assert records[0]["teacher_top1"] == pytest.approx(result["teacher_top1"])
    kd = _losses(str(tmp_path), "train/loss_kd")
    assert len(kd) == 20 and all(np.isfinite(kd)) and kd[0] > 0
    # The KD weight ramps up over the first 8 steps (warmup 2 epochs of 4 steps), yet the
    # total falls: measured ~3.5 over the first 6 steps, ~0.15 over the last 6.
    total = _losses(str(tmp_path))
    assert np.mean(total[-6:]) < 0.5 * np.mean(total[:6]), total
    assert checkpoint.Checkpointer(str(tmp_path)).latest_step() == 20


def test_ensemble_teacher_averages_its_teachers(teacher_run):
    teacher_dir, _ = teacher_run
    single = _config("kd", teacher_dir=teacher_dir).teacher
    double = _config("kd").teacher
    double.name, double.checkpoint = "resnet8,resnet8", f"{teacher_dir},{teacher_dir}"
    build = functools.partial(
        classification.build_teacher, num_classes=4, image_size=8, dtype=None, model_kwargs={}
    )
    module1, vars1, _ = build(single.name, single.checkpoint)
    module2, vars2, name = build(double.name, double.checkpoint)
    assert name == "resnet8+resnet8"
    images = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    logits1, _ = module1.apply(vars1, images, train=False)
    logits2, _ = module2.apply(vars2, images, train=False)
    chex.assert_trees_all_close(logits2, logits1, rtol=1e-5, atol=1e-5)
    double.checkpoint = teacher_dir  # one path for two teachers
    with pytest.raises(ValueError, match="one path per teacher"):
        build(double.name, double.checkpoint)


def _resume_from_step_15(teacher_dir: str, workdir: pathlib.Path, data: str) -> dict:
    """Copies the 30-step teacher run as it was at step 15 and resumes it to step 30."""
    shutil.copytree(teacher_dir, workdir)
    shutil.rmtree(workdir / "ckpt" / "30")
    assert checkpoint.Checkpointer(workdir).latest_step() == 15
    return train.train_and_evaluate(_config(steps=30, ckpt_every_steps=15, data=data), str(workdir))


def test_resume_equals_uninterrupted_run(teacher_run, colour_data, tmp_path):
    teacher_dir, full = teacher_run
    resumed = _resume_from_step_15(teacher_dir, tmp_path / "resumed", colour_data)
    assert int(resumed["state"].step) == 30
    # The device-resident data is a function of (seed, step): the same batches after resume.
    chex.assert_trees_all_close(resumed["state"].params, full["state"].params, rtol=1e-5)
    chex.assert_trees_all_close(resumed["state"].batch_stats, full["state"].batch_stats, rtol=1e-5)
    chex.assert_trees_all_close(resumed["state"].opt_state, full["state"].opt_state, rtol=1e-5)
    assert resumed["last_top1"] == pytest.approx(full["last_top1"], abs=2e-3)


@pytest.mark.slow
def test_resume_onto_fewer_devices(teacher_run, colour_data, tmp_path, monkeypatch):
    teacher_dir, full = teacher_run
    make_mesh = sharding.make_mesh
    monkeypatch.setattr(sharding, "make_mesh", lambda: make_mesh(jax.devices()[:4]))
    resumed = _resume_from_step_15(teacher_dir, tmp_path / "resumed", colour_data)
    assert int(resumed["state"].step) == 30
    # Only the order of the float32 reductions changes with the device count; over 15
    # steps at lr 0.1 that moved parameters by up to ~1e-3 here.
    chex.assert_trees_all_close(resumed["state"].params, full["state"].params, atol=5e-3)


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path, monkeypatch):
    write = metrics_io.MetricWriter.write

    def write_then_signal(self, step, metrics):  # SIGTERM arrives during step 3's logging
        write(self, step, metrics)
        if step == 3 and "train/loss" in metrics:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(metrics_io.MetricWriter, "write", write_then_signal)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as info:
        train.train_and_evaluate(_config(steps=30), str(tmp_path))
    assert info.value.code == 128 + signal.SIGTERM
    assert checkpoint.Checkpointer(str(tmp_path)).latest_step() == 4
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is restored


@pytest.mark.parametrize(
    "overrides,error,match",
    [
        (dict(batch_size=12), ValueError, "divisible"),
        (dict(eval_batch_size=100), ValueError, "divisible"),
        (dict(student__name="resnet9"), KeyError, "resnet9"),
        (dict(distiller__name="nope"), KeyError, "nope"),
        (dict(distiller__temprature=2.0), TypeError, "temprature"),
        (dict(dataset__name="nope"), ValueError, "nope"),
        (dict(dataset__name="cifar100_local"), FileNotFoundError, "cifar-100"),
    ],
)
def test_config_errors(overrides, error, match, tmp_path):
    config = _config(**overrides)
    if config.dataset.name == "cifar100_local":
        config.dataset.data_dir = str(tmp_path)  # an empty folder: the data is missing
    with pytest.raises(error, match=match):
        train.train_and_evaluate(config, str(tmp_path / "run"))


def test_teacher_errors(teacher_run, colour_data, tmp_path):
    teacher_dir, _ = teacher_run
    with pytest.raises(ValueError, match="checkpoint"):
        train.train_and_evaluate(_config("kd"), str(tmp_path / "none"))
    mismatch = _config("kd", teacher_dir=teacher_dir, teacher__name="resnet14", data=colour_data)
    with pytest.raises(ValueError):
        train.train_and_evaluate(mismatch, str(tmp_path / "mismatch"))


def test_corrupt_checkpoint_fails_clearly(teacher_run, colour_data, tmp_path):
    teacher_dir, _ = teacher_run
    workdir = tmp_path / "corrupt"
    shutil.copytree(teacher_dir, workdir)
    latest = workdir / "ckpt" / "30"
    for path in pathlib.Path(latest).rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="Could not restore"):
        train.train_and_evaluate(_config(steps=40, data=colour_data), str(workdir))


def test_non_finite_loss_stops_with_step_and_keeps_good_checkpoint(tmp_path):
    config = _config(steps=8, ckpt_every_steps=1, schedule__base_lr=1e15)
    with pytest.raises(FloatingPointError, match=r"step \d+") as info:
        train.train_and_evaluate(config, str(tmp_path))
    bad_step = int(re.search(r"at step (\d+)", str(info.value)).group(1))
    assert 1 <= bad_step < 8
    # Checkpoints stop at the last state whose metrics were finite.
    assert checkpoint.Checkpointer(str(tmp_path)).latest_step() == bad_step


@pytest.mark.slow  # a second training run (~16 s); fast_conv_test checks the op itself
def test_fast_conv_option_trains_the_same(teacher_run, colour_data, tmp_path):
    teacher_dir, _ = teacher_run
    runs = {}
    for mode in ("", "all"):  # off, and every convolution's weight gradient as matmuls
        config = _config(
            "luminet",
            steps=3,
            teacher_dir=teacher_dir,
            data=colour_data,
            fast_conv=mode,
            eval_teacher=False,
        )
        runs[mode] = train.train_and_evaluate(config, str(tmp_path / (mode or "plain")))
    plain, fast = runs[""]["state"], runs["all"]["state"]
    # Float32 sums in another order; after 3 steps at lr 0.1 a few entries move by ~2e-5.
    chex.assert_trees_all_close(fast.params, plain.params, rtol=1e-3, atol=1e-4)
    assert not np.allclose(plain.params["fc"]["kernel"], 0)  # it trained


def test_metric_writer_writes_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator  # noqa: PLC0415

    writer = metrics_io.MetricWriter(str(tmp_path), tensorboard=True)
    writer.write(1, {"train/loss": np.float32(2.5), "note": "text", "flag": True})
    writer.write(2, {"train/loss": 1.25, "eval/top1": 0.5})
    writer.close()
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    # What TensorBoard itself reads back: the numbers as scalars, strings and bools left out.
    tb = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
    tb.Reload()
    assert sorted(tb.Tags()["scalars"]) == ["eval/top1", "train/loss"]
    assert [(e.step, e.value) for e in tb.Scalars("train/loss")] == [(1, 2.5), (2, 1.25)]
    assert [(e.step, e.value) for e in tb.Scalars("eval/top1")] == [(2, 0.5)]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToyDistiller(distillers.base.Distiller):
    """A new method as a user writes one: CE + weight * mse(pooled_s @ W, pooled_t), with a
    learnable W and a count of its calls as state. Nothing else in the code knows it."""

    uses_feats = True
    weight: float = 0.5

    def init(self, rng, s_feats, t_feats, **context):
        del context
        shape = (s_feats["pooled"].shape[-1], t_feats["pooled"].shape[-1])
        w = 0.1 * jax.random.normal(rng, shape, s_feats["pooled"].dtype)
        return {"params": {"w": w}, "state": {"calls": jax.numpy.zeros((), jax.numpy.int32)}}

    def loss(self, x):
        pred = x.s_feats["pooled"] @ x.extra["params"]["w"]
        mse = jax.numpy.mean((pred - x.t_feats["pooled"]) ** 2)
        mse = mse if x.axis_name is None else jax.lax.pmean(mse, x.axis_name)
        ce = distillers.softmax_xent(x.s_logits, x.labels, axis_name=x.axis_name)
        state = {"calls": x.extra["state"]["calls"] + 1}
        return distillers.LossOutput(
            ce + self.weight * mse, {"loss_ce": ce, "loss_kd": self.weight * mse}, state
        )


def test_a_new_distiller_is_one_class_and_one_registry_line(
    teacher_run, colour_data, tmp_path, monkeypatch
):
    monkeypatch.setitem(distillers.DISTILLERS, "toy", ToyDistiller)  # the registry line
    config = _config("kd", steps=2, teacher_dir=teacher_run[0], data=colour_data)
    config.distiller = dict(name="toy", weight=0.5)
    result = train.train_and_evaluate(config, str(tmp_path))
    state = result["state"]
    assert result["steps"] == 2 and int(state.extra_state["calls"]) == 2
    assert state.extra_params["w"].shape == (64, 64)
    kd = _losses(str(tmp_path), "train/loss_kd")
    assert len(kd) == 2 and all(np.isfinite(kd)) and min(kd) > 0
