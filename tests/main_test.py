"""The command line: `python -m luminet_jax.main` (subprocesses, one CPU device) and launch.py.

The subprocesses of this file start together in one fixture (each pays 5-10 s of imports,
so they overlap), from a directory outside the repository.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time

import ml_collections
import pytest

from luminet_jax import cli, launch, quickstart

ROOT = pathlib.Path(__file__).resolve().parents[1]
_LOG_LINE = re.compile(r"^[IWEF]\d{4} ")  # absl's prefix
_NOISE = ("Unable to initialize backend", "Type handler registry", 'Item "default" was found')


def _stderr_lines(result: subprocess.CompletedProcess) -> list[str]:
    """stderr's lines less XLA's slow-operation alarms, which depend on the machine: an E
    line from slow_operation_alarm.cc and a message between two rows of '*', logged when a
    compilation (or a constant folding) runs long; seen here when the fixture's three
    training runs compiled on one busy core."""
    lines, stars_left = [], 0
    for line in result.stderr.splitlines():
        if stars_left:
            stars_left -= bool(line) and set(line) == {"*"}
        elif _LOG_LINE.match(line) and "] " in line and "slow_operation_alarm.cc" in line:
            stars_left = 2
        else:
            lines.append(line)
    return lines


def _env() -> dict[str, str]:
    # TF_ENABLE_ONEDNN_OPTS=1: TensorFlow's oneDNN path, the default on Intel CPUs, whose
    # import prints a banner whatever TF_CPP_MIN_LOG_LEVEL says; forced so that every
    # machine checks that the commands keep it away from the user.
    env = dict(
        os.environ,
        XLA_FLAGS="",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
        TF_ENABLE_ONEDNN_OPTS="1",
    )
    env.pop(cli.TRACEBACK_ENV, None)
    return env


# The limits on the subprocesses only catch a hang: the fixture's three 1-step training runs
# took 190-250 s together on one core shared with a busy loop (AMD EPYC), so a slower or
# busier machine needs several times that.
_LIMIT_S = 1800


def _main(*args: str, timeout: int = _LIMIT_S, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "luminet_jax.main", *args],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _closed_port() -> socket.socket:
    """A socket bound to a port of 127.0.0.1 but not listening: connecting to it is refused,
    and no other program can take the port while the socket is open (a port that was free a
    moment ago may not be)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


def _timed(args: list[str], cwd, env=None) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = subprocess.run(
        args, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=_LIMIT_S
    )  # fmt: skip
    return result, time.monotonic() - start


def _without_tensorflow(tmp) -> dict[str, str]:
    """An environment where `import tensorflow` / `tensorflow_datasets` raise
    ModuleNotFoundError and `importlib.util.find_spec` finds neither (as on a GPU image
    without them)."""
    site = tmp / "no_tf_site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\nsys.modules['tensorflow'] = None\nsys.modules['tensorflow_datasets'] = None\n"
    )
    return dict(_env(), PYTHONPATH=f"{site}{os.pathsep}{ROOT}")


_TINY = ["--config.batch_size=16", "--config.num_train_steps=1", "--config.log_every_steps=1"]


def _corrupt_teacher(tmp: pathlib.Path) -> pathlib.Path:
    """A resnet8 teacher's variables whose array files are garbled."""
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from luminet_jax import checkpoint  # noqa: PLC0415

    shapes = checkpoint._expected_variables("resnet8", 10)
    rng = np.random.default_rng(0)  # random, not zeros: OCDBT keeps small or repeated data inline
    values = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype), shapes)
    checkpoint.save_variables(tmp / "corrupt", values)
    arrays = [p for p in (tmp / "corrupt").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert arrays
    for path in arrays:
        path.write_bytes(b"not a checkpoint")
    return tmp / "corrupt"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> (CompletedProcess, seconds) of every subprocess below, run concurrently."""
    # TensorFlow's import loads matplotlib, whose first load in a config folder builds a font
    # cache and, past 5 s (a busy machine, many fonts), warns about it. conftest gives the
    # session a fresh folder: build the cache here, once, before the subprocesses share it.
    import matplotlib.font_manager  # noqa: F401, PLC0415

    tmp = tmp_path_factory.mktemp("main")
    teacher = tmp / "teacher"
    no_coordinator = _closed_port()
    refused = f"127.0.0.1:{no_coordinator.getsockname()[1]}"
    main = [sys.executable, "-m", "luminet_jax.main", f"--workdir={tmp / 'bad'}"]
    as_console_script = "import sys; sys.argv[0] = {!r}; from luminet_jax.{} import run; run()"
    jobs = {
        "help": [sys.executable, "-c", as_console_script.format("luminet-train", "main"), "--help"],
        "quickstart_help": [
            sys.executable, "-c", as_console_script.format("luminet-quickstart", "quickstart"),
            "--help",
        ],
        "unknown_config": [*main, "--config=quickstrat:teacher"],
        # The README's form, run outside the repository: resolves to the shipped config.
        "no_teacher": [*main, "--config=configs/quickstart.py:method=kd"],
        "process_id": [*main, "--config=quickstart:teacher", "--num_processes=2", "--process_id=2"],
        "corrupt_teacher": [
            *main, f"--config=quickstart:method=kd,teacher_dir={_corrupt_teacher(tmp)}",
            "--config.teacher.name=resnet8", "--config.student.name=resnet8", *_TINY,
        ],
        "coordinator": [
            *main, "--config=quickstart:teacher", f"--coordinator_address={refused}",
            "--num_processes=2", "--process_id=1", "--initialization_timeout=5",
        ],
    }  # fmt: skip
    # The training subprocesses: the default log of a short run (the teacher of the
    # in-process tests below), and the same run streaming through tf.data (TensorFlow
    # imported while it trains).
    teacher_run = [*main[:3], "--config=quickstart:teacher", "--config.student.name=resnet8"]
    jobs["teacher"] = [
        *teacher_run, f"--workdir={teacher}", *_TINY, f"--config.compile_cache={tmp / 'cache'}"
    ]  # fmt: skip
    jobs["streamed"] = [
        *teacher_run, f"--workdir={tmp / 'streamed'}", *_TINY,
        "--config.dataset.device_resident=False",
    ]  # fmt: skip
    # The device-resident path on the shipped sample, where TensorFlow is not installed.
    jobs["no_tensorflow"] = [*teacher_run, f"--workdir={tmp / 'no_tf'}", *_TINY]
    envs = {"no_tensorflow": _without_tensorflow(tmp)}
    with no_coordinator, concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        futures = {
            name: pool.submit(_timed, args, tmp, envs.get(name)) for name, args in jobs.items()
        }
        out = {name: future.result() for name, future in futures.items()}
    out["teacher_dir"], out["cache_dir"] = teacher, tmp / "cache"
    return out


@pytest.mark.integration
def test_console_script_help_lists_its_flags(runs):
    result, _ = runs["help"]  # absl exits with 1 after --help
    assert "Entry point: luminet-train" in result.stdout, result.stdout[:300]  # the docstring
    for flag in ("--config", "--workdir", "--coordinator_address", "--num_processes"):
        assert flag in result.stdout, result.stdout
    result, _ = runs["quickstart_help"]
    assert "--epochs" in result.stdout and "--methods" in result.stdout, result.stdout


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return [line for line in result.stderr.splitlines() if not _LOG_LINE.match(line)]


@pytest.mark.integration
@pytest.mark.parametrize(
    "name, error, hint",
    [
        ("unknown_config", "no shipped config of that name; shipped configs: ", "--helpshort"),
        ("no_teacher", "kd needs a teacher, but config.teacher.checkpoint is empty",
         "--config quickstart:teacher --workdir"),
        ("process_id", "--process_id=2 is out of range for --num_processes=2", "0..num_processes"),
        ("coordinator", "no coordinator reachable at 127.0.0.1:", "start process 0"),
        # Not orbax's late tracebacks ("Event loop is closed") first: hundreds of lines.
        ("corrupt_teacher", "Could not read variables from", "--verbosity=1"),
    ],
)  # fmt: skip
def test_bad_input_prints_one_line_and_a_hint(runs, name, error, hint):
    lines = _error_lines(runs[name][0])
    assert len(lines) == 2, lines
    assert error in lines[0] and "error" in lines[0].lower(), lines
    assert hint in lines[1], lines


@pytest.mark.integration
def test_a_failed_checkpoint_read_leaves_no_late_tracebacks(tmp_path):
    # A read that fails part-way leaves tensorstore reads running after orbax has closed its
    # event loop; each reports "Event loop is closed" (as an unraisable exception) when it
    # ends. The process waits here for them, as a run that goes on would.
    code = (
        "import gc, sys, time\n"
        "from luminet_jax import cli\n"
        "cli.quiet_logs()\n"
        "from luminet_jax import checkpoint\n"
        "try:\n    checkpoint.load_variables(sys.argv[1])\nexcept RuntimeError:\n    pass\n"
        "else:\n    sys.exit(3)\n"
        "time.sleep(1)\ngc.collect()\nprint('done')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(_corrupt_teacher(tmp_path))],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=_LIMIT_S,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout == "done\n", result.stderr[-3000:]
    assert "Event loop is closed" not in result.stderr, result.stderr[-3000:]
    assert "never retrieved" not in result.stderr, result.stderr[-3000:]
    assert not [line for line in _stderr_lines(result) if line.startswith(("W", "E"))]


@pytest.mark.integration
def test_unreachable_coordinator_fails_within_the_timeout(runs):
    result, seconds = runs["coordinator"]
    assert "after 5 s" in _error_lines(result)[0]
    # 5 s of waiting plus the imports (7 s measured on one core shared with a busy loop,
    # beside the fixture's other subprocesses); jax alone would abort the process with a
    # C++ stack trace after its own timeout.
    assert seconds < 90


@pytest.mark.integration
@pytest.mark.parametrize("name", ["teacher", "streamed", "no_tensorflow"])
def test_short_run_starts_with_what_runs_where_and_logs_no_noise(runs, name):
    result, _ = runs[name]
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "", result.stdout[-3000:]
    lines = _stderr_lines(result)
    assert all(_LOG_LINE.match(line) for line in lines), lines  # nothing but log lines
    assert not [line for line in lines if any(noise in line for noise in _NOISE)], lines
    assert not [line for line in lines if line.startswith(("W", "E"))], lines
    assert not [line for line in lines if "oneDNN" in line], lines  # I0000 ... port.cc
    assert "] Run: vanilla, student resnet8 on cifar10_sample (batch 16), workdir " in lines[0]
    assert "] Devices: process 0 of 1, 1 local / 1 global cpu devices" in lines[1]
    assert any("step 1/1" in line for line in lines), lines


@pytest.mark.integration
def test_the_tensorflow_blocker_works(tmp_path):
    code = (
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('tensorflow') is None\n"
        "try:\n    import tensorflow_datasets\nexcept ModuleNotFoundError:\n    sys.exit(3)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=_without_tensorflow(tmp_path), capture_output=True
    )
    assert result.returncode == 3, result.stderr


@pytest.mark.integration
def test_compilation_cache_is_on_by_default_and_can_be_moved_or_disabled(runs):
    lines = _stderr_lines(runs["teacher"][0])
    assert f"] Compilation cache: {runs['cache_dir']}" in lines[2], lines
    assert any(p.is_file() for p in runs["cache_dir"].rglob("*"))  # the compiled steps
    lines = _stderr_lines(runs["streamed"][0])  # LUMINET_COMPILE_CACHE=off (conftest)
    assert "] Compilation cache: off" in lines[2], lines


def test_default_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(launch.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert launch.default_cache_dir() == str(tmp_path / "luminet_jax" / "jax")
    monkeypatch.setenv(launch.CACHE_ENV, "off")
    assert launch.default_cache_dir() == "" and launch.enable_compilation_cache() == ""
    unwritable = tmp_path / "file"
    unwritable.write_text("")
    assert launch.enable_compilation_cache(str(unwritable / "cache")) == ""  # logged, not fatal


@pytest.mark.integration
def test_short_run_writes_its_config(runs):
    config = json.loads((runs["teacher_dir"] / "config.json").read_text())
    assert config["student"]["name"] == "resnet8" and config["batch_size"] == 16


@pytest.mark.integration
def test_teacher_load_logs_no_orbax_warnings(runs, caplog):
    """Loading a teacher workdir makes orbax warn twice about its "default" item."""
    cli.quiet_logs()  # before orbax's import: it warns about its registry on import
    with caplog.at_level(logging.INFO):
        from luminet_jax import checkpoint

        variables = checkpoint.load_teacher(str(runs["teacher_dir"]), "resnet8", num_classes=10)
    assert "params" in variables
    assert not [r for r in caplog.records if any(n in r.getMessage() for n in _NOISE)]
    # Nothing at all above INFO (orbax warned that the item's metadata file is absent).
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _teacher_config(**dataset) -> ml_collections.ConfigDict:
    config = quickstart_config("teacher")
    config.student.name = "resnet8"
    config.batch_size, config.num_train_steps = 16, 1
    config.dataset.update(dataset)
    return config


def quickstart_config(arg: str) -> ml_collections.ConfigDict:
    return cli.load_config_module("quickstart").get_config(arg)


def _guarded_train(config, workdir, capsys) -> list[str]:
    from luminet_jax import train

    with pytest.raises(SystemExit) as info:
        cli.guarded(lambda argv: train.train_and_evaluate(config, str(workdir)), prog="p")([])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if not _LOG_LINE.match(line)]


@pytest.mark.integration
def test_unknown_dataset_and_missing_data_print_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    lines = _guarded_train(_teacher_config(name="cifar11"), tmp_path / "a", capsys)
    assert len(lines) == 2 and "Unknown dataset 'cifar11'; known: " in lines[0], lines
    missing = _teacher_config(name="cifar100_local", data_dir=str(tmp_path / "none"))
    lines = _guarded_train(missing, tmp_path / "b", capsys)
    assert len(lines) == 2 and "cifar-100-python.tar.gz" in lines[0], lines


@pytest.mark.integration
def test_corrupt_teacher_checkpoint_prints_one_line(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    corrupt = tmp_path / "teacher"
    shutil.copytree(runs["teacher_dir"], corrupt)
    arrays = [p for p in (corrupt / "ckpt").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert arrays
    for path in arrays:
        path.write_bytes(b"not a checkpoint")
    config = quickstart_config(f"method=kd,teacher_dir={corrupt}")
    config.teacher.name = config.student.name = "resnet8"
    config.batch_size, config.num_train_steps = 16, 1
    lines = _guarded_train(config, tmp_path / "kd", capsys)
    assert len(lines) == 2 and "Could not read checkpoint" in lines[0], lines


@pytest.mark.integration
def test_misspelled_override_fails_before_training(tmp_path):
    result = _main(
        "--config=configs/quickstart.py:teacher",
        f"--workdir={tmp_path}",
        "--config.batchsize=16",
    )
    assert result.returncode != 0
    assert "batch_size" in result.stderr  # "Did you mean ..."
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.integration
@pytest.mark.slow
def test_main_trains_and_resumes(tmp_path):
    common = [
        "--config=configs/quickstart.py:teacher",
        f"--workdir={tmp_path}",
        "--config.student.name=resnet8",
        "--config.batch_size=16",
    ]
    result = _main(*common, "--config.num_train_steps=2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "step 2/2" in result.stderr
    result = _main(*common, "--config.num_train_steps=3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "starting at 2" in result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 3 and 0.0 <= summary["last_top1"] <= 1.0


def test_quickstart_table():
    summary = dict(best_top1=0.5, last_top1=0.25, wall_s=12.0)
    table = quickstart.format_table([("resnet8", "kd", summary)])
    assert table.splitlines()[2] == "| resnet8 | kd | 0.5000 | 0.2500 | 12 s |"


# --------------------------------------------------------------------------------------
# launch.py, in-process


@pytest.fixture
def no_cluster(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)


def test_distributed_args(no_cluster, monkeypatch):
    assert launch.distributed_args(None, None, None) is None  # one process, as before
    assert launch.distributed_args(None, 1, 0) is None
    args = launch.distributed_args("10.0.0.1:1234", 2, 1, timeout_s=7)
    assert args == dict(
        coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1, initialization_timeout=7
    )
    # Nothing given on a cluster: jax detects it (JAX_* variables are read as before).
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "h:1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert launch.distributed_args(None, None, None)["process_id"] == 3
    assert launch.distributed_args(None, None, None, multihost=False) is None


@pytest.mark.parametrize(
    "address, n, pid, timeout, message",
    [
        ("h:1", 2, 2, 60, "--process_id=2 is out of range for --num_processes=2"),
        ("h:1", 2, -1, 60, "--process_id=-1 is out of range"),
        ("h:1", 0, 0, 60, "--num_processes=0 must be >= 1"),
        ("h", 2, 0, 60, "--coordinator_address='h' is not HOST:PORT"),
        ("h:99999", 2, 0, 60, "is not HOST:PORT"),
        ("h:1", 2, 0, 0, "--initialization_timeout=0 must be >= 1 s"),
    ],
)
def test_bad_process_flags(no_cluster, address, n, pid, timeout, message):
    with pytest.raises(cli.UserError, match=re.escape(message)):
        launch.distributed_args(address, n, pid, timeout_s=timeout)


def test_wait_for_coordinator():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        launch.wait_for_coordinator(f"127.0.0.1:{server.getsockname()[1]}", 5)  # returns
    with _closed_port() as closed:
        address = f"127.0.0.1:{closed.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(cli.UserError, match=f"no coordinator reachable at {address} after 1 s"):
            launch.wait_for_coordinator(address, 1)
    # 1 s and a 0.5 s retry; the bound leaves a busy machine room and still catches a wait
    # that ignores its limit.
    assert time.monotonic() - start < 20


def test_preflight_checks_names_and_the_teacher(tmp_path):
    launch.preflight(quickstart_config("teacher"))  # vanilla: no teacher needed
    config = quickstart_config("method=kd")
    with pytest.raises(cli.UserError, match="kd needs a teacher") as info:
        launch.preflight(config, config_name="quickstart", prog="luminet-train")
    assert "luminet-train --config quickstart:teacher --workdir" in info.value.hint
    with config.unlocked():
        config.teacher.checkpoint = str(tmp_path / "none")
    with pytest.raises(cli.UserError, match="teacher checkpoint .*none does not exist"):
        launch.preflight(config, config_name="cifar100_res56_res20")
    config.teacher.checkpoint = str(tmp_path)
    launch.preflight(config)
    for field, value, error, match in [
        ("student", "resnet7", KeyError, "Unknown model 'resnet7'"),
        ("teacher", "resnet7", KeyError, "Unknown model 'resnet7'"),
        ("distiller", "kdd", KeyError, "Unknown distiller 'kdd'"),
    ]:
        bad = config.copy_and_resolve_references()
        bad[field].name = value
        with pytest.raises(error, match=match):
            launch.preflight(bad)
    bad = config.copy_and_resolve_references()
    bad.distiller.name = "vanilla"  # keeps KD's hyperparameters
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        launch.preflight(bad)


def test_check_batch():
    config = quickstart_config("teacher")
    launch.check_batch(config, 8)
    config.batch_size = 60
    with pytest.raises(cli.UserError, match="batch_size=60 is not divisible by the 8 devices"):
        launch.check_batch(config, 8)
