"""benchmarks/lowering.py: every training step of the project exports (`jax.export`) for CUDA
and TPU, on one device and on the 8-device CPU mesh of tests/conftest.py; KD-SVD's
decomposition lowers for TPU under shard_map and equals NumPy's SVD."""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks import lowering
from luminet_jax import distillers
from luminet_jax.distillers import svd_losses

ROOT = pathlib.Path(__file__).resolve().parents[1]
PLATFORMS = ["cuda", "tpu"]


def test_case_list_covers_every_distiller_and_the_other_steps():
    names = lowering.case_names()
    assert {f"train/{m}" for m in distillers.DISTILLERS} <= set(names)
    for case in ("eval/resnet8x4", "seeds/luminet", "imagenet_bf16/luminet", "detection/train"):
        assert case in names
    assert any(n.startswith("detection/distill_") for n in names)
    assert len(names) == len(set(names)) == len(distillers.DISTILLERS) + 6  # 25 cases


def _check(results, devices):
    failed = [(r["case"], r["platform"], r["error"][:300]) for r in results if not r["ok"]]
    assert not failed, failed
    assert len(results) == len(lowering.case_names()) * len(PLATFORMS)
    assert {r["devices"] for r in results} == {devices}
    assert ("train/kdsvd", "tpu") in {(r["case"], r["platform"]) for r in results}


@pytest.mark.parametrize("devices", [1, 8])
@pytest.mark.integration  # heavy: the second tier
def test_every_case_lowers_for_cuda_and_tpu(devices):
    """The whole list with the real models (KD-SVD on TPU included), on one device and on
    the 8-device data mesh: ~40 s of CPU each (tracing and lowering, no compilation)."""
    _check(lowering.run(PLATFORMS, devices), devices)


def test_a_failing_platform_is_reported_on_its_own_row(monkeypatch):
    """JAX's own TPU SVD under shard_map (what KD-SVD used before its eigh) fails to lower:
    its loop carries a flag that is not data-varying. The multi-platform export fails, the
    per-platform retry reports TPU alone as failed."""
    mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])

    def svd_sum(x):
        return jax.lax.pmean(jnp.linalg.svd(x, full_matrices=False)[1].sum(), "data")

    fn = jax.jit(jax.shard_map(svd_sum, mesh=mesh, in_specs=P("data"), out_specs=P()))
    spec = jax.ShapeDtypeStruct((2, 8, 4), jnp.float32, sharding=NamedSharding(mesh, P("data")))
    monkeypatch.setattr(lowering, "case_names", lambda: ["svd/jax"])
    monkeypatch.setattr(lowering._Builder, "build", lambda self, case: (fn, (spec,)))
    rows = {r["platform"]: r for r in lowering.run(["cuda", "rocm", "tpu"], 1)}
    assert rows["cuda"]["ok"] and rows["rocm"]["ok"], rows
    if rows["tpu"]["ok"]:
        pytest.skip("this JAX lowers its TPU SVD under shard_map")
    assert "carry" in rows["tpu"]["error"], rows["tpu"]


def test_kdsvd_decomposition_lowers_for_tpu_and_equals_numpy_svd():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 40, 8))  # (B, C*H, W), as KD-SVD views a map
    x[0] = x[0] @ np.diag([5.0, 4, 3, 2, 1, 0.5, 0.25, 0.125])  # spread singular values
    _, want_s, want_vh = np.linalg.svd(x, full_matrices=False)
    with jax.enable_x64(True):
        s, v = jax.jit(svd_losses._singular_values_and_right_vectors)(jnp.asarray(x))
    np.testing.assert_allclose(s, want_s, rtol=1e-12)
    # Vectors up to sign: |<v, v_ref>| = 1 per column.
    cos = np.abs(np.einsum("bni,bin->bi", np.asarray(v), want_vh))
    np.testing.assert_allclose(cos, 1.0, rtol=1e-10)
    # Under shard_map (check_vma) with the loss and its gradient, for TPU.
    mesh = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])
    loss = functools.partial(distillers.kdsvd_loss, k=1)

    def grad_fn(s_feats, t_feats):
        value, grad = jax.value_and_grad(loss)(s_feats, t_feats)
        return jax.lax.pmean(value, "data"), grad

    specs = dict(in_specs=(P("data"), P("data")), out_specs=(P(), P("data")))
    fn = jax.jit(jax.shard_map(grad_fn, mesh=mesh, **specs))
    sharded = NamedSharding(mesh, P("data"))
    feats = [jax.ShapeDtypeStruct((4, h, h, c), jnp.float32, sharding=sharded) for h, c in
             ((16, 8), (8, 16), (4, 32))]  # fmt: skip
    jax.export.export(fn, platforms=["tpu"])(feats, feats)


@pytest.mark.integration
def test_cli_writes_the_json_list(tmp_path):
    out = tmp_path / "lowering.json"
    cmd = [sys.executable, "benchmarks/lowering.py", "--platforms", "cuda,tpu", "--devices", "2"]
    cmd += ["--cases", "eval/*,train/kd", "--out", str(out)]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=300, env=env, capture_output=True)
    rows = json.loads(out.read_text())
    assert [(r["case"], r["platform"]) for r in rows] == [
        ("train/kd", "cuda"), ("train/kd", "tpu"), ("eval/resnet8x4", "cuda"),
        ("eval/resnet8x4", "tpu"),
    ]  # fmt: skip
    for r in rows:
        assert set(r) >= {"case", "platform", "devices", "ok", "error"}
        assert r["ok"] and r["error"] == "" and r["devices"] == 2
