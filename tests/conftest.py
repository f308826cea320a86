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
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# No test writes JAX's compilation cache into the user's home (tests that check the cache
# give it a folder of their own).
os.environ.setdefault("LUMINET_COMPILE_CACHE", "off")
# Nor anything else: `import tensorflow` writes ~/.keras/keras.json (Keras) and matplotlib's
# font cache (~/.cache/matplotlib, ~/.config/matplotlib), where a home that is read-only or
# absent makes them warn or fall back. Both go to a folder of this session (subprocesses
# inherit it); a user's own setting wins.
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
