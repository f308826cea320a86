"""Test setup: 8 fake CPU devices, set before jax is imported anywhere."""

import atexit
import os
import pathlib
import shutil
import sys
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
# The tests run on the CPU's 8 simulated devices, also where the user's shell points JAX at
# a GPU (JAX_PLATFORMS=cuda would fail every 8-device test there).
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CUDA_VISIBLE_DEVICES"] = ""
# No test writes JAX's compilation cache into the user's home (tests that check the cache
# give it a folder of their own). Set, not defaulted: a folder in the user's shell would
# otherwise be used (and main_test's "Compilation cache: off" would fail).
os.environ["LUMINET_COMPILE_CACHE"] = "off"
# Nor do the user's other switches for these commands reach the tests: a traceback instead
# of the one-line errors that cli_test and main_test check, or a cluster that the
# subprocesses of main_test would try to join.
_SWITCHES = ("LUMINET_TRACEBACK", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
for _name in _SWITCHES:
    os.environ.pop(_name, None)
# Nor do libraries write under the home: `import tensorflow` writes ~/.keras/keras.json
# (Keras) and matplotlib's font cache (~/.cache/matplotlib, ~/.config/matplotlib), where a
# home that is read-only or absent makes them warn or fall back. Both go to a folder of
# this session (subprocesses inherit it); a user's own setting wins.
_SESSION_HOME = tempfile.mkdtemp(prefix="luminet_tests_")
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)
os.environ.setdefault("KERAS_HOME", os.path.join(_SESSION_HOME, "keras"))
os.environ.setdefault("MPLCONFIGDIR", os.path.join(_SESSION_HOME, "matplotlib"))

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `configs` is a top-level package beside `luminet_jax`.
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """`../shared/data` (real images, DATA.md); skips where a user's clone lacks it."""
    if not (SHARED_DATA / "DATA.md").exists():
        pytest.skip(f"{SHARED_DATA} is absent (only CI and developers have ../shared)")
    return SHARED_DATA


# Test tiers. Unit tests (the default) run no training loop and start no Python subprocess,
# and the whole unit tier takes under 3 minutes on 2 cores; tests that train, start
# subprocesses or compile for seconds (whole models, 8-device equivalences, float64
# gradient checks) are marked `integration` (a module's `pytestmark` or a test's mark). The
# README's unit command is `-m "not slow and not integration"`, its integration command
# `-m "integration and not slow"`; the guard below holds unit tests to their tier.
_TIER_HINT = "mark the test (or its module) `integration`: unit tests do not {}"


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise RuntimeError(_TIER_HINT.format(what))

    return refuse


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if item.get_closest_marker("integration") or item.get_closest_marker("slow"):
        yield
        return
    import subprocess  # noqa: PLC0415
    from unittest import mock  # noqa: PLC0415

    from luminet_jax import train  # noqa: PLC0415

    popen_init = subprocess.Popen.__init__

    def popen(self, args, *rest, **kwargs):
        first = args[0] if isinstance(args, list | tuple) and args else args
        if first == sys.executable:
            raise RuntimeError(_TIER_HINT.format("start Python subprocesses"))
        popen_init(self, args, *rest, **kwargs)

    with (
        mock.patch.object(train, "train_and_evaluate", _refuse("run train_and_evaluate")),
        mock.patch.object(subprocess.Popen, "__init__", popen),
    ):
        yield
