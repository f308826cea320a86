"""Checkpoints: round trip, resume on another device count, retention, corruption, teachers."""

from __future__ import annotations

import os
import pathlib
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from luminet_jax import checkpoint, optim, sharding, state

TEACHER = "resnet8"  # smallest CIFAR model of the zoo; only its shapes are computed
NUM_CLASSES = 10


def _state(seed: int = 0) -> state.TrainState:
    rng = np.random.default_rng(seed)
    variables = {
        "params": {
            "conv": {"kernel": rng.normal(size=(3, 3, 3, 4)).astype(np.float32)},
            "fc": {
                "kernel": rng.normal(size=(4, 5)).astype(np.float32),
                "bias": np.zeros(5, np.float32),
            },
        },
        "batch_stats": {
            "bn": {"mean": rng.normal(size=4).astype(np.float32), "var": np.ones(4, np.float32)}
        },
    }
    lr_fn = optim.make_schedule(base_lr=0.1, steps_per_epoch=3, decay_epochs=(2,))
    tx = optim.make_optimizer(learning_rate=lr_fn, weight_decay=5e-4)
    s = state.create_train_state(jax.tree.map(jnp.asarray, variables), tx)
    # Non-trivial momentum and step so that a round trip is informative.
    trace = jax.tree.map(lambda p: p * 0.5 + seed, s.params)
    opt_state = jax.tree.map(lambda x: x, s.opt_state)
    opt_state = (opt_state[0], (opt_state[1][0]._replace(trace=trace), opt_state[1][1]))
    return s.replace(step=jnp.asarray(7 + seed, jnp.int32), opt_state=opt_state)


def _on(mesh, tree):
    return jax.device_put(tree, sharding.replicated(mesh))


def test_restore_or_returns_state_unchanged_without_checkpoint(tmp_path):
    ckpt = checkpoint.Checkpointer(tmp_path)
    s = _state()
    assert ckpt.latest_step() is None
    assert ckpt.restore_or(s) is s
    ckpt.close()


@pytest.mark.parametrize("save_devices,restore_devices", [(8, 1), (1, 8)])
def test_round_trip_onto_another_device_count(tmp_path, save_devices, restore_devices):
    save_mesh = sharding.make_mesh(jax.devices()[:save_devices])
    restore_mesh = sharding.make_mesh(jax.devices()[:restore_devices])
    saved = _on(save_mesh, _state(seed=1))
    ckpt = checkpoint.Checkpointer(tmp_path)
    assert ckpt.save(8, saved)
    ckpt.wait()
    ckpt.close()

    fresh = _on(restore_mesh, _state(seed=0))  # different values, same structure
    reader = checkpoint.Checkpointer(tmp_path)
    restored = reader.restore_or(fresh)
    assert not reader.save(8, fresh)  # a step already on disk is not written again
    reader.close()
    assert isinstance(restored, state.TrainState)
    chex.assert_trees_all_equal(jax.device_get(restored), jax.device_get(saved))
    want = sharding.replicated(restore_mesh)
    for leaf in jax.tree.leaves(restored):
        assert leaf.sharding.is_equivalent_to(want, leaf.ndim), leaf.sharding
    assert int(restored.step) == 8 and restored.extra_params == {}
    assert restored.batch_stats["bn"]["mean"].shape == (4,)


def test_max_to_keep_keeps_the_newest(tmp_path):
    ckpt = checkpoint.Checkpointer(tmp_path, max_to_keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, _state(seed=step))
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
    restored = ckpt.restore_or(_state())
    ckpt.close()
    np.testing.assert_array_equal(restored.params["fc"]["kernel"], _state(3).params["fc"]["kernel"])
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["2", "3"]


def _garble(directory: pathlib.Path, which: str):
    """Overwrites the array data ("data") or truncates the JSON metadata ("metadata")."""
    files = [p for p in directory.rglob("*") if p.is_file() and p.name != "commit_success.txt"]
    files = [p for p in files if ("METADATA" in p.name) == (which == "metadata")]
    assert files
    for p in files:
        if which == "metadata":
            p.write_bytes(p.read_bytes()[:10])
        else:
            p.write_bytes(b"\x00garbage" * 3)


@pytest.mark.parametrize("which", ["data", "metadata"])
def test_corrupt_checkpoint_raises_clear_error(tmp_path, which):
    ckpt = checkpoint.Checkpointer(tmp_path)
    ckpt.save(5, _state())
    ckpt.wait()
    ckpt.close()
    _garble(tmp_path / "ckpt" / "5", which)
    reader = checkpoint.Checkpointer(tmp_path)
    with pytest.raises(RuntimeError, match=r"checkpoint .*ckpt/5 .*delete that directory") as e:
        reader.restore_or(_state())
    reader.close()
    assert len(str(e.value)) < 600


def test_corrupt_checkpoint_read_raw_is_one_error_and_no_library_warning(tmp_path):
    # restore_raw is how a teacher (or a report) reads a workdir: a garbled array file must
    # give the one RuntimeError, not orbax's warning about topologies first.
    ckpt = checkpoint.Checkpointer(tmp_path)
    ckpt.save(5, _state())
    ckpt.wait()
    ckpt.close()
    _garble(tmp_path / "ckpt" / "5", "data")
    reader = checkpoint.Checkpointer(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match=r"Could not read checkpoint .*ckpt/5"):
            reader.restore_raw(5)
    reader.close()
    assert not [w for w in caught if "Sharding info" in str(w.message)]


def _model_variables(seed=0):
    """Random variables with the teacher model's exact shapes (no model compute)."""
    expected = checkpoint._expected_variables(TEACHER, NUM_CLASSES)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), expected)


def test_save_variables_and_load_teacher_round_trip(tmp_path):
    variables = _model_variables()
    checkpoint.save_variables(tmp_path / "teacher", variables)
    chex.assert_trees_all_equal(checkpoint.load_variables(tmp_path / "teacher"), variables)
    loaded = checkpoint.load_teacher(tmp_path / "teacher", TEACHER, num_classes=NUM_CLASSES)
    chex.assert_trees_all_equal(loaded, variables)


def test_load_teacher_from_training_workdir(tmp_path):
    variables = _model_variables(seed=3)
    train_state = state.create_train_state(variables, optim.make_optimizer(learning_rate=0.1))
    ckpt = checkpoint.Checkpointer(tmp_path / "run")
    ckpt.save(4, train_state)
    ckpt.close()
    loaded = checkpoint.load_teacher(tmp_path / "run", TEACHER, num_classes=NUM_CLASSES)
    chex.assert_trees_all_equal(loaded, variables)


def test_load_teacher_rejects_mismatched_shapes_and_missing_paths(tmp_path):
    variables = _model_variables()
    flat = checkpoint._flat(variables)
    key = sorted(k for k in flat if k.endswith("kernel"))[0]
    bad = jax.tree_util.tree_map_with_path(
        lambda p, x: (
            np.zeros((*x.shape[:-1], x.shape[-1] + 1), x.dtype)
            if "/".join(str(k.key) for k in p) == key
            else x
        ),
        variables,
    )
    checkpoint.save_variables(tmp_path / "bad", bad)
    shape = flat[key].shape
    want = f"{key} has shape {(*shape[:-1], shape[-1] + 1)}, model expects {shape}"
    with pytest.raises(ValueError, match=want.replace("(", r"\(").replace(")", r"\)")):
        checkpoint.load_teacher(tmp_path / "bad", TEACHER, num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="classifier|fc|linear|expects"):
        checkpoint.load_teacher(tmp_path / "bad", TEACHER, num_classes=NUM_CLASSES + 1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint.load_teacher(tmp_path / "nope", TEACHER, num_classes=NUM_CLASSES)


def test_load_teacher_from_pytorch_npz(tmp_path):
    """A .npz of PyTorch-keyed arrays goes through models.from_torch and validation."""
    from luminet_jax.models import torch_convert

    variables = _model_variables(seed=5)
    state_dict = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in jax.tree_util.tree_flatten_with_path(variables[collection])[0]:
            names = tuple(str(k.key) for k in path)
            if leaf.ndim == 4:
                leaf = leaf.transpose(3, 2, 0, 1)  # HWIO -> OIHW
            elif leaf.ndim == 2:
                leaf = leaf.T
            state_dict[torch_convert.torch_key(collection, names)] = leaf
    np.savez(tmp_path / "teacher.npz", **state_dict)
    loaded = checkpoint.load_teacher(tmp_path / "teacher.npz", TEACHER, num_classes=NUM_CLASSES)
    chex.assert_trees_all_equal(loaded, variables)


def test_load_teacher_checks_shapes_at_the_run_image_size(tmp_path):
    """A ViT's position embedding depends on the input size: a patch-4 ViT at 32x32."""
    from luminet_jax import models

    model = models.get_model("vit_compact", num_classes=10, patch_size=8)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)
    )
    variables = {"params": jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract["params"])}
    checkpoint.save_variables(tmp_path / "vit", variables)
    loaded = checkpoint.load_teacher(
        tmp_path / "vit", "vit_compact", num_classes=10, image_size=16, patch_size=8
    )
    chex.assert_trees_all_equal_shapes(loaded["params"], variables["params"])
    with pytest.raises(ValueError, match="pos_embed"):  # checked at the default 32x32
        checkpoint.load_teacher(tmp_path / "vit", "vit_compact", num_classes=10, patch_size=8)
