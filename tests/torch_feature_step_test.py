"""benchmarks/torch_feature_step.py: the PyTorch FitNet, CRD and ReviewKD reference steps at a
tiny size (one step runs, its loss is finite, it moves the student and the method's modules;
CRD updates only its batch's memory rows), FitNet's loss against NumPy, and the recipe and
extra-parameter counts of resnet32x4 -> resnet8x4 against the JAX benchmark's."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import step as jax_step  # noqa: E402
from benchmarks import torch_feature_step as tfs  # noqa: E402
from benchmarks import torch_step  # noqa: E402


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: with the default OpenMP spin-waiting, torch's threads stall next
    to other load on a small CPU (a tiny step took ~2 s instead of ~15 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = dict(batch=4, image_size=16, num_classes=10)
CRD_TINY = dict(num_train=64, num_negatives=8, pool=2)


def _tiny(method):
    kw = CRD_TINY if method == "crd" else {}
    return torch_step.make_step("resnet8", "resnet20", method, **TINY, **kw)


def _copy(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


@pytest.mark.parametrize("method", tfs.METHODS)
def test_one_step_is_finite_and_moves_student_and_extra(method):
    step, info = _tiny(method)
    assert info["extra_params"] > 0 and info["student_params"] > 0
    s0, e0, t0 = _copy(step.student), _copy(step.extra), _copy(step.teacher)
    mem0 = {k: v.clone() for k, v in step.extra.named_buffers() if "memory_" in k}
    mem0 = {k.split(".")[-1]: v for k, v in mem0.items()}
    loss = step()
    assert torch.isfinite(loss)
    for name, params in (("student", s0), ("extra", e0)):
        module = step.student if name == "student" else step.extra
        for k, v in module.named_parameters():
            assert not torch.equal(v, params[k]), (name, k)
    for k, v in step.teacher.named_parameters():
        assert torch.equal(v, t0[k]), k
    if method == "crd":
        index = step.last["index"]
        other = torch.ones(CRD_TINY["num_train"], dtype=torch.bool)
        other[index] = False
        memory = step.extra["memory"]
        for k, old in mem0.items():
            new = getattr(memory, k)
            torch.testing.assert_close(new[other], old[other], rtol=0, atol=0)
            assert not torch.equal(new[index], old[index]), k
            torch.testing.assert_close(new[index].norm(dim=1), torch.ones(len(index)))
        assert (memory.z > 0).all()
        z = memory.z.clone()
        step()  # Z is set on the first step and kept
        torch.testing.assert_close(memory.z, z, rtol=0, atol=0)


def test_crd_contrast_indices_are_exact_mode():
    batches = tfs.draw_crd_batches(8, 5, 200, 16, 3, seed=1)
    rng = np.random.default_rng(1)
    train_labels = rng.integers(0, 5, 200)  # the same draw as draw_crd_batches' first
    for b in batches:
        idx, cidx = b["index"].numpy(), b["contrast_idx"].numpy()
        assert len(set(idx)) == len(idx) and cidx.shape == (8, 17)
        np.testing.assert_array_equal(cidx[:, 0], idx)
        np.testing.assert_array_equal(b["labels"].numpy(), train_labels[idx])
        neg_labels = train_labels[cidx[:, 1:]]
        assert (neg_labels != train_labels[idx][:, None]).all()
        assert all(len(set(row)) == 16 for row in cidx[:, 1:])


def test_fitnet_loss_equals_numpy():
    step, _ = _tiny("fitnet")
    images, labels = step.images, step.labels
    with torch.no_grad():
        total, parts = step.loss(images, labels)
        logits, s_feats = step.student.features(images)
        _, t_feats = step.teacher.features(images)
    f_s = s_feats["feats"][2].double().numpy()  # (N, C_s, H, W): stage2
    f_t = t_feats["feats"][2].double().numpy()
    conv, bn = step.extra["conv_reg"].conv, step.extra["conv_reg"].bn
    assert conv.kernel_size == (1, 1) and conv.bias is not None
    w = conv.weight.detach().double().numpy()[:, :, 0, 0]
    y = np.einsum("nchw,oc->nohw", f_s, w) + conv.bias.detach().double().numpy()[:, None, None]
    mean, var = y.mean((0, 2, 3), keepdims=True), y.var((0, 2, 3), keepdims=True)
    gamma = bn.weight.detach().double().numpy()[:, None, None]
    beta = bn.bias.detach().double().numpy()[:, None, None]
    reg = np.maximum((y - mean) / np.sqrt(var + bn.eps) * gamma + beta, 0.0)
    mse = np.mean((reg - f_t) ** 2)
    z = logits.double().numpy()
    log_p = z - z.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    ce = -np.mean(log_p[np.arange(len(z)), labels.numpy()])
    np.testing.assert_allclose(parts["loss_kd"].item(), 100.0 * mse, rtol=1e-5)
    np.testing.assert_allclose(parts["loss_ce"].item(), ce, rtol=1e-5)
    np.testing.assert_allclose(total.item(), ce + 100.0 * mse, rtol=1e-5)


def test_recipes_and_extra_params_match_the_jax_benchmark():
    assert frozenset(tfs.METHODS) == jax_step.TORCH_FEATURE
    assert not jax_step.TORCH_FEATURE & jax_step.JAX_ONLY
    for method in ("fitnet", "crd"):
        jax_hp = {k: v for k, v in jax_step.HPARAMS[method].items() if k != "mode"}
        assert tfs.HPARAMS[method] == jax_hp, method
    assert jax_step.HPARAMS["crd"]["mode"] == "exact"
    review = jax_step.HPARAMS["reviewkd"]
    for key in ("ce_weight", "reviewkd_weight", "warmup_epochs"):
        assert tfs.HPARAMS["reviewkd"][key] == review[key], key
    # resnet32x4 -> resnet8x4 at 32x32 (building is cheap: no step is run).
    kw = dict(batch=2, image_size=32, num_classes=100)
    fitnet = tfs.FeatureStep("resnet8x4", "resnet32x4", "fitnet", **kw)
    crd = tfs.FeatureStep("resnet8x4", "resnet32x4", "crd", **kw, num_train=1000, pool=1)
    reviewkd = tfs.FeatureStep("resnet8x4", "resnet32x4", "reviewkd", **kw)
    assert fitnet.info()["extra_params"] == 128 * 128 + 128 + 2 * 128 == 16_768
    assert crd.info()["extra_params"] == 2 * (256 * 128 + 128) == 65_792
    assert crd.info()["state_numbers"] == 2 * 1000 * 128 + 2
    assert crd.pool[0]["contrast_idx"].shape == (2, 16_385)
    fusion = reviewkd.extra["fusion"]
    assert [abf.conv1[0].in_channels for abf in fusion.abfs][::-1] == list(review["in_channels"])
    assert [abf.conv2[0].out_channels for abf in fusion.abfs][::-1] == list(review["out_channels"])
    assert fusion.shapes == list(review["shapes"]) and fusion.out_shapes == list(
        review["out_shapes"]
    )
    assert reviewkd.info()["extra_params"] == 1_808_774  # the JAX ReviewKD's (Table 3)


def test_crd_loss_and_memory_update_equal_numpy():
    step, _ = _tiny("crd")
    batch, memory = step.pool[0], step.extra["memory"]
    mem = {k: getattr(memory, k).double().numpy().copy() for k in ("memory_s", "memory_t")}
    with torch.no_grad():
        _, parts = step.loss(step.images, **batch)
        _, s_feats = step.student.features(step.images)
        _, t_feats = step.teacher.features(step.images)
        v_s = step.extra["embed_s"](s_feats["pooled_feat"]).double().numpy()
        v_t = step.extra["embed_t"](t_feats["pooled_feat"]).double().numpy()
    idx, cidx = batch["index"].numpy(), batch["contrast_idx"].numpy()
    n, t, k = CRD_TINY["num_train"], 0.07, CRD_TINY["num_negatives"]
    # The student's embedding is scored against the teacher's memory and vice versa.
    out_s = np.exp(np.einsum("bkd,bd->bk", mem["memory_t"][cidx], v_s) / t)
    out_t = np.exp(np.einsum("bkd,bd->bk", mem["memory_s"][cidx], v_t) / t)
    z = np.array([out_s.mean() * n, out_t.mean() * n])  # the first step sets Z
    np.testing.assert_allclose(memory.z.numpy(), z, rtol=1e-5)

    def nce(x):
        pn = k / n
        return -(np.log(x[:, 0] / (x[:, 0] + pn + 1e-7)).sum()
                 + np.log(pn / (x[:, 1:] + pn + 1e-7)).sum()) / len(x)  # fmt: skip

    expect = 0.8 * (nce(out_s / z[0]) + nce(out_t / z[1]))
    np.testing.assert_allclose(parts["loss_kd"].item(), expect, rtol=1e-5)
    for key, v in (("memory_s", v_s), ("memory_t", v_t)):
        mixed = 0.5 * mem[key][idx] + 0.5 * v
        mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
        np.testing.assert_allclose(getattr(memory, key).numpy()[idx], mixed, rtol=1e-5, atol=1e-6)
