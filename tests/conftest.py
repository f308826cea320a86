"""Test setup: 8 fake CPU devices, set before jax is imported anywhere."""

import os
import pathlib
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# No test writes JAX's compilation cache into the user's home (tests that check the cache
# give it a folder of their own).
os.environ.setdefault("LUMINET_COMPILE_CACHE", "off")

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
