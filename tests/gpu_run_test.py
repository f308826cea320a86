"""benchmarks/gpu_run.py: the driver's budget, timeouts, fallbacks and reruns on fake stages;
its figures (trainer log, JAX-vs-PyTorch merge, PyTorch's device choice); the PyTorch
ImageNet ResNets equal the JAX models; and (slow) the whole smoke run."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from benchmarks import gpu_helpers, gpu_run, gpu_stages

ROOT = pathlib.Path(__file__).resolve().parents[1]
PY = sys.executable


def _write(payload: str) -> list[str]:
    """A command that writes `payload` (JSON) to the file after its --out flag."""
    code = f"import sys; open(sys.argv[sys.argv.index('--out') + 1], 'w').write({payload!r})"
    return [PY, "-c", code]


def _fail(code: int) -> list[str]:
    return [PY, "-c", f"print('boom on stdout'); raise SystemExit({code})"]


def _stage(name, attempts=(), skipped="", timeout=30):
    plan = lambda ctx: gpu_stages.Plan(list(attempts), skipped)
    return gpu_run.Stage(name, timeout, timeout, plan)


def _figures(outputs):
    return {"values": [o["x"] for o in outputs]}


def _attempt(label, *commands):
    return gpu_stages.Attempt(label, list(commands), _figures)


@pytest.fixture
def fake_stages(monkeypatch):
    sleeper = [PY, "-c", "import time; time.sleep(60)"]
    stages = [
        _stage("good", [_attempt("a", _write('{"x": 1}'), _write('{"x": 2}'))]),
        _stage("fallback", [_attempt("one process", _fail(3)),
                            _attempt("split", _write('{"x": 3}'))]),
        _stage("slow", [_attempt("sleeps", sleeper), _attempt("never", _write('{"x": 4}'))],
               timeout=2),
        _stage("no_torch", skipped="PyTorch is not installed here"),
        _stage("broken", [_attempt("b", _fail(1))]),
    ]  # fmt: skip
    monkeypatch.setattr(gpu_run, "STAGES", stages)
    return stages


@pytest.mark.integration
def test_stages_run_fail_fall_back_time_out_skip_and_rerun(tmp_path, fake_stages):
    out = tmp_path / "out"
    argv = ["--smoke", "--out", str(out), "--cache-dir", "off"]
    t0 = time.monotonic()
    assert gpu_run.main(argv) == 1  # a stage failed
    assert time.monotonic() - t0 < 20  # the sleeper was killed at its 2 s timeout
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "run.log"]
    data = json.loads((out / "results.json").read_text())
    assert data["driver"]["smoke"] is True and data["driver"]["cache_dir"] == "off"
    stages = {s["name"]: s for s in data["stages"]}
    assert list(stages) == ["good", "fallback", "slow", "no_torch", "broken"]
    for s in stages.values():
        assert {"name", "ok", "seconds"} <= set(s)
    assert stages["good"]["ok"] is True and stages["good"]["values"] == [1, 2]
    assert stages["fallback"]["ok"] and stages["fallback"]["values"] == [3]
    assert stages["fallback"]["earlier_attempts"] == ["one process: exit code 3"]
    slow = stages["slow"]
    assert slow["ok"] is False and "timed out" in slow["error"] and "never" not in slow["error"]
    assert stages["no_torch"]["ok"] is None
    assert stages["no_torch"]["skipped"] == "PyTorch is not installed here"
    broken = stages["broken"]
    assert broken["ok"] is False and "exit code 1" in broken["error"]
    assert "boom on stdout" in broken["log_tail"]
    assert "boom on stdout" in (out / "run.log").read_text()

    # A rerun keeps the stages already ok and runs the others again.
    gpu_run.main(argv)
    again = {s["name"]: s for s in json.loads((out / "results.json").read_text())["stages"]}
    assert again["good"]["rerun"] == "kept from an earlier run"
    assert again["good"]["values"] == [1, 2]
    assert "rerun" not in again["broken"] and again["broken"]["ok"] is False
    runs = json.loads((out / "results.json").read_text())["driver"]["earlier_runs"]
    assert len(runs) == 1 and runs[0]["argv"] == argv

    # No budget left: every stage not yet ok is skipped with the reason.
    gpu_run.main([*argv, "--budget", "0"])
    last = {s["name"]: s for s in json.loads((out / "results.json").read_text())["stages"]}
    assert last["good"]["ok"] and last["fallback"]["ok"]
    assert last["broken"]["ok"] is None and last["broken"]["skipped"].startswith("budget")


@pytest.mark.integration
def test_only_the_named_stages_run_and_the_others_are_kept(tmp_path, fake_stages):
    out = tmp_path / "out"
    argv = ["--smoke", "--out", str(out), "--cache-dir", "off"]
    gpu_run.main([*argv, "--stages", "good"])
    gpu_run.main([*argv, "--stages", "fallback", "--force"])
    names = [s["name"] for s in json.loads((out / "results.json").read_text())["stages"]]
    assert names == ["good", "fallback"]
    with pytest.raises(SystemExit, match="unknown stages"):
        gpu_run.main([*argv, "--stages", "nope"])


def test_every_stage_of_the_real_list_has_a_plan_in_both_modes(tmp_path):
    assert [s.name for s in gpu_run.STAGES][:2] == ["env", "table3_float32"]
    assert len(gpu_run.STAGES) >= 7
    for smoke in (False, True):
        ctx = gpu_stages.Context(smoke=smoke, cache_dir="", tmp=tmp_path, torch=True, script="x")
        for stage in gpu_run.STAGES:
            plan = stage.plan(ctx)
            assert plan.attempts and not plan.skipped, stage.name
            for attempt in plan.attempts:
                for cmd in attempt.commands:
                    assert cmd[0] == sys.executable, (stage.name, cmd)
                    if cmd[1].startswith("benchmarks/"):
                        assert (ROOT / cmd[1]).exists()
                        assert cmd[-2:] == ["--cache-dir", "off"], (stage.name, cmd)


def test_torch_device_choice():
    def ctx(torch=True, backend=None, cuda=None):
        c = gpu_stages.Context(smoke=False, cache_dir="", tmp=ROOT, torch=torch, script="x")
        if backend:
            c.done["env"] = {"jax": {"backend": backend}, "torch": {"cuda_available": cuda}}
        return c

    assert gpu_stages.torch_device(ctx(torch=False)) == (None, "PyTorch is not installed here")
    assert gpu_stages.torch_device(ctx(backend="gpu", cuda=True)) == ("cuda", "")
    device, why = gpu_stages.torch_device(ctx(backend="gpu", cuda=False))
    assert device is None and "no CUDA" in why
    assert gpu_stages.torch_device(ctx(backend="cpu", cuda=False)) == ("cpu", "")
    assert gpu_stages.torch_device(ctx()) == ("auto", "")  # no env figures
    # Without PyTorch the Table 3 stage runs JAX alone and says why.
    plan = gpu_stages.plan_table3("float32")(ctx(torch=False))
    assert [a.label for a in plan.attempts] == ["jax only"]
    assert "--framework" in plan.attempts[0].commands[0]
    assert (
        plan.attempts[0].commands[0][plan.attempts[0].commands[0].index("--framework") + 1] == "jax"
    )
    # With PyTorch: one process first (JAX keeps 45% of the GPU), then separate processes.
    plan = gpu_stages.plan_table3("bfloat16")(ctx(backend="gpu", cuda=True))
    assert [a.label for a in plan.attempts] == ["one process", "separate processes"]
    assert plan.attempts[0].env == {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.45"}
    assert "--channels-last" in plan.attempts[0].commands[0]
    assert len(plan.attempts[1].commands) == 2


def test_step_figures_of_separate_processes_give_unpaired_ratios():
    def out(framework, ms, t_ms):
        row = dict(label=f"{framework}/kd", framework=framework, method="kd", ms_per_step=ms,
                   throughput_ms_per_step=t_ms, junk=1)  # fmt: skip
        return {"config": {"pair": "a:b", "batch": 8}, "platform": "gpu", "device_kind": "H100",
                "precision": {framework: True}, "steps": [row]}  # fmt: skip

    figures = gpu_stages.step_figures([out("jax", 10.0, 8.0), out("torch", 20.0, 10.0)])
    jax_row, torch_row = figures["rows"]
    assert jax_row["jax_over_torch_unpaired"] == 0.5
    assert jax_row["throughput_jax_over_torch_unpaired"] == 0.8
    assert "junk" not in jax_row and "jax_over_torch_unpaired" not in torch_row
    assert figures["precision"] == {"jax": True, "torch": True}
    assert figures["config"] == {"pair": "a:b", "batch": 8}


LOG = """\
I1206 11:28:36.353815 1 launch.py:258] Compilation cache: /tmp/c
I1206 11:28:42.764108 1 train.py:122] Student resnet8 (78042 params); 46 steps/epoch, 30 total
I1206 11:28:48.337512 1 train.py:207] step 10/30 (epoch 0.22) loss 2.2 top1 0.1 lr 0.05 | 115.9 img/s | ETA 0h00m11s
I1206 11:28:49.618327 1 train.py:207] step 20/30 (epoch 0.43) loss 2.1 top1 0.1 lr 0.05 | 640.0 img/s | ETA 0h00m01s
I1206 11:28:50.599086 1 train.py:207] step 30/30 (epoch 0.65) loss 2.0 top1 0.2 lr 0.05 | 654.2 img/s | ETA 0h00m00s
I1206 11:28:51.266372 1 train.py:177] step 30 eval: top1 0.2240 top5 0.7850 loss 2.0223
"""  # noqa: E501


def test_trainer_log_gives_images_per_s_and_compile_seconds():
    got = gpu_helpers.parse_trainer_log(LOG, log_every=10)
    assert got["logged_steps"] == 30 and got["first_window_images_per_s"] == 115.9
    assert got["images_per_s"] == 654.2  # the median of the windows after the first
    # First window 5.573 s, of which 10 steps x 64 images at 654.2 img/s are steady: 0.978 s.
    assert got["compile_s"] == pytest.approx(5.573 - 640 / 654.2, abs=0.01)
    logged = LOG.replace("Compilation cache: /tmp/c", "Compiled the train step in 4.5 s")
    got = gpu_helpers.parse_trainer_log(logged, log_every=10)
    assert got["compile_s"] == 4.5 and got["compile_source"] == "trainer log"
    with pytest.raises(RuntimeError, match="step lines"):
        gpu_helpers.parse_trainer_log(LOG.splitlines()[0], log_every=10)


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
@pytest.mark.integration  # heavy: the second tier
def test_torch_imagenet_resnets_equal_the_jax_models(name):
    torch = pytest.importorskip("torch")
    from benchmarks import torch_models
    from luminet_jax import models

    torch.manual_seed(0)
    net = torch_models.get_model(name, num_classes=10).eval()
    for m in net.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    counts = {"resnet18": 11_689_512, "resnet34": 21_797_672}  # torchvision's, 1000 classes
    assert sum(p.numel() for p in torch_models.get_model(name, 1000).parameters()) == counts[name]
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
        logits, feats = net.features(torch.from_numpy(x))
    np.testing.assert_allclose(logits.numpy(), want, rtol=1e-5, atol=1e-5)
    assert [f.shape[1] for f in feats["feats"]] == [64, 64, 128, 256, 512]
    variables = models.from_torch(name, net.state_dict(), num_classes=10)
    model = models.get_model(name, num_classes=10)
    got, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))(
        variables, x.transpose(0, 2, 3, 1)
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.integration  # heavy: the second tier
def test_torch_step_on_a_device_with_another_recipe():
    torch = pytest.importorskip("torch")
    from benchmarks import step as step_bench
    from benchmarks import torch_step

    hp = step_bench.hparams_for("kd", "resnet34:resnet18")
    assert hp == dict(ce_weight=0.5, kd_weight=0.5, temperature=1.0)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    labels = torch.tensor([0, 1, 2, 3])
    ce = torch.nn.functional.cross_entropy(s, labels)
    want = 0.5 * ce + 0.5 * torch_step.kd_loss(s, t, 1.0)
    torch.testing.assert_close(torch_step.distill_loss("kd", s, t, labels, 1, hparams=hp), want)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        step, info = torch_step.make_step(
            "resnet8", "resnet8", "luminet", batch=2, image_size=8, num_classes=4,
            device="cpu", hparams=step_bench.hparams_for("luminet", "resnet34:resnet18"),
            amp=True, channels_last=True,
        )  # fmt: skip
        assert torch.isfinite(step()) and torch.isfinite(step(sync=False))
        torch_step.synchronize("cpu")
    finally:
        torch.set_num_threads(threads)
    flags = torch_step.tf32_flags()
    assert set(flags) == {
        "torch_matmul_allow_tf32", "torch_cudnn_allow_tf32", "torch_float32_matmul_precision"
    }  # fmt: skip


@pytest.mark.integration
def test_driver_and_lowering_run_without_tensorflow_and_ml_collections():
    """The GPU image has neither: the driver, the benchmark modules and the lowering of a
    classification and a detection step must not need them."""
    code = (
        "import sys\n"
        "for m in ('tensorflow', 'tensorflow_datasets', 'ml_collections'):\n"
        "    sys.modules[m] = None\n"
        "from benchmarks import gpu_helpers, gpu_run, gpu_stages, lowering, timing\n"
        "from benchmarks import detection_distill, detection_step, seeds, step, torch_models\n"
        "rows = lowering.run(['cuda', 'tpu'], 1, ['train/kdsvd', 'detection/distill_luminet'])\n"
        "assert len(rows) == 4 and all(r['ok'] for r in rows), rows\n"
    )
    subprocess.run([PY, "-c", code], check=True, cwd=ROOT, timeout=300)


@pytest.mark.slow  # the whole smoke run: ~3.5-4 min of CPU, 3-5 min wall on the shared 2-core VM
def test_smoke_run_passes_every_stage(tmp_path):
    out = tmp_path / "gpu_out"
    cmd = [PY, "benchmarks/gpu_run.py", "--smoke", "--out", str(out)]
    cmd += ["--cache-dir", str(tmp_path / "cache")]
    # As from a shell: one host device (not conftest's 8), JAX and PyTorch on the CPU.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "run.log"]
    data = json.loads((out / "results.json").read_text())
    stages = {s["name"]: s for s in data["stages"]}
    assert list(stages) == [s.name for s in gpu_run.STAGES]
    for name, s in stages.items():
        assert s["ok"] is True or (s["ok"] is None and s["skipped"]), (name, s)
    for name in ("table3_float32", "table3_bfloat16", "table3_features", "imagenet_bf16"):
        rows = stages[name]["rows"]
        assert rows and all(r["ms_per_step"] > 0 and r["throughput_ms_per_step"] > 0 for r in rows)
    assert {r["variant"] for r in stages["seeds"]["rows"]} == {"1 seed", "4 seeds"}
    assert [r["size"] for r in stages["detection"]["rows"]] == ["tiny"]
    assert [r["method"] for r in stages["detection_distill"]["rows"]] == ["luminet"]
    assert stages["trainer"]["images_per_s"] > 0 and stages["trainer"]["projection"]["wall_s"] > 0
    assert stages["env"]["jax"]["backend"]
    print(
        f"smoke run: {wall:.0f} s wall, {sum(s.get('cpu_s', 0) for s in stages.values()):.0f} s CPU"
    )
