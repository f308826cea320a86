"""luminet_jax.torch_files: torch.save files (zip and legacy formats) and NumPy pickles read
without torch, equal to torch.load where torch is installed; nothing in a file is executed."""

from __future__ import annotations

import argparse
import collections
import pickle
import sys

import numpy as np
import pytest
import zoo_files

from luminet_jax import torch_files


def _objects(torch):
    """What checkpoints hold: tensors of each dtype, views, transposes, broadcasts, scalars,
    an nn.Parameter, numbers, an optimizer state and an object of a user class."""
    torch.manual_seed(0)
    base = torch.randn(100)
    model = collections.OrderedDict(
        [
            ("conv.weight", torch.randn(4, 3, 3, 3)),
            ("fc.weight", torch.randn(5, 6).t()),  # non-contiguous
            ("slice", base[10:22].view(3, 4)),  # a view at an offset of a shared storage
            ("other", base[50:55]),
            ("expanded", torch.ones(1).expand(3, 4)),  # stride 0
            ("bn.num_batches_tracked", torch.tensor(240)),
            ("half", torch.randn(3).half()),
            ("double", torch.randn(2, 2).double()),
            ("bf16", torch.randn(3).bfloat16()),
            ("mask", torch.tensor([True, False, True])),
            ("bytes", torch.arange(4, dtype=torch.uint8)),
            ("empty", torch.zeros(0, 3)),
            ("param", torch.nn.Parameter(torch.randn(2))),
        ]
    )
    return {
        "model": model,
        "epoch": 240,
        "accuracy": torch.tensor(79.42),
        "optimizer": {
            "state": {0: {"momentum_buffer": torch.ones(2)}},
            "param_groups": [{"lr": 0.1}],
        },
        "args": argparse.Namespace(lr=0.05),
    }


def _assert_equal(got, expected, torch):
    for key, tensor in expected.items():
        want = (
            tensor.detach().float().numpy()
            if tensor.dtype == torch.bfloat16
            else tensor.detach().numpy()
        )
        assert got[key].shape == want.shape, key
        np.testing.assert_array_equal(np.asarray(got[key], want.dtype), want, err_msg=key)
        if tensor.dtype != torch.bfloat16:
            assert got[key].dtype == want.dtype, key


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_save_files_read_as_torch_load(tmp_path, legacy):
    torch = pytest.importorskip("torch")
    path = tmp_path / "ckpt.pth"
    torch.save(_objects(torch), path, _use_new_zipfile_serialization=not legacy)
    expected = torch.load(path, weights_only=False)
    got = torch_files.read(path)
    _assert_equal(got["model"], expected["model"], torch)
    assert isinstance(got["model"], collections.OrderedDict)
    assert list(got["model"]) == list(expected["model"])
    assert got["epoch"] == 240 and float(got["accuracy"]) == pytest.approx(79.42)
    np.testing.assert_array_equal(got["optimizer"]["state"][0]["momentum_buffer"], [1.0, 1.0])
    assert "argparse.Namespace" in repr(got["args"])  # a placeholder: nothing imported or run
    assert torch_files.load_state_dict(path).keys() == expected["model"].keys()


@pytest.mark.parametrize(
    "legacy, cuda", [(False, False), (True, False), (True, True)], ids=["zip", "legacy", "gpu"]
)
def test_the_tests_writer_makes_files_torch_loads(tmp_path, legacy, cuda):
    """tests/zoo_files.py writes the zoo tests' checkpoints in torch's own formats (`cuda`: a
    legacy file of GPU tensors, as 2019's checkpoints are)."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "ckpt.pth"
    pool = np.arange(50, dtype=np.float32)
    model = {
        "a": np.ones((2, 3), np.float32),
        "b": zoo_files.View(pool, 7, (3, 4)),
        "n": np.asarray(240, np.int64),
        "h": np.arange(3, dtype=np.float16),
    }
    path.write_bytes(
        zoo_files.torch_bytes({"model": model, "epoch": 240}, legacy=legacy, cuda=cuda)
    )
    expected = torch.load(path, weights_only=True, map_location="cpu")
    _assert_equal(torch_files.read(path)["model"], expected["model"], torch)
    np.testing.assert_array_equal(expected["model"]["b"].numpy(), pool[7:19].reshape(3, 4))


@pytest.mark.parametrize(
    "legacy, cuda", [(False, False), (True, False), (True, True)], ids=["zip", "legacy", "gpu"]
)
def test_reads_without_torch(tmp_path, monkeypatch, legacy, cuda):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    path = tmp_path / "ckpt.pth"
    weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.asarray(3, np.int64)}
    path.write_bytes(zoo_files.torch_bytes({"state_dict": weights}, legacy=legacy, cuda=cuda))
    got = torch_files.load_state_dict(path)
    np.testing.assert_array_equal(got["w"], weights["w"])
    assert got["n"].dtype == np.int64 and int(got["n"]) == 3


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_and_corrupt_files_raise_value_errors(tmp_path, legacy):
    path = tmp_path / "ckpt.pth"
    data = zoo_files.torch_bytes({"model": {"w": np.ones(1000, np.float32)}}, legacy=legacy)
    for cut in (len(data) // 3, len(data) - 100):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="ckpt.pth"):
            torch_files.read(path)
    # A tensor reading past its storage (a corrupt header): refused, never read out of bounds.
    pool = np.ones(10, np.float32)
    zoo_files.torch_save(path, {"w": zoo_files.View(pool, 6, (2, 4))}, legacy=legacy)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        torch_files.read(path)


def test_torch_files_never_run_code(tmp_path):
    marker = tmp_path / "ran"
    evil = zoo_files._Global("os", "system")  # as a malicious pickle would name it

    class Payload:
        def __reduce__(self):
            return evil, (f"touch {marker}",)

    path = tmp_path / "evil.pth"
    zoo_files.torch_save(path, {"model": {"w": np.ones(2, np.float32)}, "x": Payload()})
    got = torch_files.read(path)
    assert "os.system" in repr(got["x"]) and not marker.exists()
    np.testing.assert_array_equal(torch_files.load_state_dict(path)["w"], [1.0, 1.0])


def test_numpy_pickles_and_what_they_may_hold(tmp_path):
    path = tmp_path / "model_final.pkl"
    model = {"a.weight": np.ones((2, 2), np.float32), "b_momentum": np.zeros(1)}
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "Detectron2 Model Zoo"}, f)
    assert list(torch_files.load_state_dict(path)) == ["a.weight"]  # optimizer blobs dropped
    with open(path, "wb") as f:
        pickle.dump({"model": model, "f": print}, f)
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        torch_files.read_pickle(path)
    with pytest.raises(ValueError, match="builtins.print"):
        torch_files.read(path)
    with open(path, "wb") as f:
        pickle.dump({"epoch": 3}, f)
    with pytest.raises(ValueError, match="neither a state_dict"):
        torch_files.load_state_dict(path)
    with pytest.raises(FileNotFoundError):
        torch_files.read(tmp_path / "none.pth")


def test_parameter_count_leaves_out_batchnorm_statistics():
    sd = {
        "conv.weight": np.zeros((4, 3, 3, 3)),
        "bn.weight": np.zeros(4),
        "bn.bias": np.zeros(4),
        "bn.running_mean": np.zeros(4),
        "bn.running_var": np.zeros(4),
        "bn.num_batches_tracked": np.zeros(()),
    }
    assert torch_files.parameter_count(sd) == 108 + 8
