"""Checkpoints (orbax): training state save/resume, plain variables, and teacher loading.

The only module that imports orbax, so orbax API changes stay here. Training checkpoints
hold the student's `TrainState` (as its state dict: step, params, batch_stats, opt_state,
extra_params, extra_state) under `<workdir>/ckpt/<step>`; the teacher is never saved with them.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

CKPT_SUBDIR = "ckpt"
_DELETE_HINT = "If it is corrupt or incomplete (e.g. an interrupted save), delete that directory."
_MAX_CAUSE_CHARS = 300  # tensorstore errors embed their whole spec
_TORCH_SUFFIXES = (".pth", ".pt")  # teacher files read by torch_files

# Off GPU, orbax saves each array "replica-parallel" by default, which compiles a slicing
# program per array on the first save (20-40 s for a small ResNet's state on CPU). One
# writer per array, orbax's choice on GPU, costs a fraction of a second instead.
ocp.type_handlers.register_type_handler(
    jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True
)


def _cause(e: Exception) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= _MAX_CAUSE_CHARS else text[:_MAX_CAUSE_CHARS] + " ..."


def _abstract(tree: Any) -> Any:
    """ShapeDtypeStructs carrying each array's sharding: the restore target."""

    def leaf(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, np.ndarray | np.generic | jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None))
        return x

    return jax.tree.map(leaf, tree)


def _target_from_metadata(tree_metadata: Any) -> Any:
    """A restore target from saved metadata: the saved shapes and dtypes, on the default device.

    Host (numpy) arrays as the target restore without the saved shardings, so a checkpoint
    written on N devices, or by several processes, loads in one process.
    """
    return jax.tree.map(lambda m: np.zeros(tuple(m.shape), m.dtype), tree_metadata)


def _tree_metadata(item_metadata: Any) -> Any:
    return getattr(item_metadata, "tree", item_metadata)


def _restore_on_host(item_path: str) -> Any:
    """A saved pytree as numpy arrays, ignoring the saved shardings and devices.

    Restoring as np.ndarray needs no device topology, so a checkpoint written by several
    processes (or on N devices) reads back in any single process.
    """
    ckptr = ocp.PyTreeCheckpointer()
    try:
        meta = ckptr.metadata(item_path)
        tree = _tree_metadata(getattr(_tree_metadata(meta), "item_metadata", meta))
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        with warnings.catch_warnings():
            # Where the metadata is unreadable orbax falls back to the saved shardings and
            # warns about topologies before failing; the caller's error says what happened.
            warnings.filterwarnings("ignore", "Sharding info not provided", UserWarning)
            return ckptr.restore(item_path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    finally:
        ckptr.close()


class Checkpointer:
    """Saves and restores a `TrainState` under `<workdir>/ckpt` (async saves; call `wait`)."""

    def __init__(self, workdir: str | os.PathLike, max_to_keep: int = 3):
        """Opens (creating if needed) `<workdir>/ckpt`.

        Args:
          workdir: the training run's directory.
          max_to_keep: how many of the most recent checkpoints are kept.
        """
        self.directory = os.path.join(os.fspath(workdir), CKPT_SUBDIR)
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        """The newest saved step, or None when there is none."""
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        """All saved steps, oldest first."""
        return sorted(self._mngr.all_steps())

    def restore_or(self, state: Any) -> Any:
        """Restores the latest checkpoint onto `state`'s structure, dtypes and shardings.

        The target is built from `state`, so a run saved on 8 devices can resume on 1
        (or the other way round) as long as `state` is placed as the new run wants it.

        Args:
          state: a `TrainState` (concrete arrays) laid out as the resumed run needs.

        Returns:
          The restored state, or `state` unchanged when the workdir has no checkpoint.

        Raises:
          RuntimeError: the latest checkpoint cannot be read or does not fit `state`.
        """
        step = self.latest_step()
        if step is None:
            return state
        target = _abstract(flax.serialization.to_state_dict(state))
        path = os.path.join(self.directory, str(step))
        try:
            restored = self._mngr.restore(step, args=ocp.args.StandardRestore(target))
        except Exception as e:  # orbax/tensorstore raise many types for unreadable data.
            raise RuntimeError(
                f"Could not restore checkpoint {path} into the current train state "
                f"({_cause(e)}). {_DELETE_HINT}"
            ) from e
        return flax.serialization.from_state_dict(state, restored)

    def restore_raw(self, step: int | None = None) -> dict[str, Any]:
        """The state dict saved at `step` (default: latest), arrays on the default device.

        Raises:
          FileNotFoundError: there is no checkpoint.
          RuntimeError: the checkpoint cannot be read.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {self.directory}.")
        path = os.path.join(self.directory, str(step))
        try:
            return jax.tree.map(jnp.asarray, _restore_on_host(os.path.join(path, "default")))
        except Exception as e:
            raise RuntimeError(
                f"Could not read checkpoint {path} ({_cause(e)}). {_DELETE_HINT}"
            ) from e

    def save(self, step: int, state: Any, force: bool = False) -> bool:
        """Starts an asynchronous save of `state` as `step` (returns whether it saves).

        A step that is already saved (e.g. the step a run just resumed from) is skipped.

        Args:
          step: the step number naming the checkpoint.
          state: the `TrainState`.
          force: save even if the manager's policy would skip this step.
        """
        if step in self._mngr.all_steps():
            return False
        state_dict = flax.serialization.to_state_dict(state)
        return self._mngr.save(step, args=ocp.args.StandardSave(state_dict), force=force)

    def wait(self) -> None:
        """Blocks until pending saves are on disk."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._mngr.close()


def save_variables(path: str | os.PathLike, variables: Any) -> None:
    """Writes `variables` (e.g. `{"params", "batch_stats"}`) to the orbax directory `path`.

    Blocks until written. Overwrites nothing: an existing `path` is an error (orbax's).
    """
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.abspath(os.fspath(path)), variables)
    ckptr.wait_until_finished()
    ckptr.close()


def load_variables(path: str | os.PathLike) -> Any:
    """Reads a directory written by `save_variables` (arrays on the default device).

    Raises:
      FileNotFoundError: `path` does not exist.
      RuntimeError: `path` is not a readable orbax checkpoint.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"No variables at {path}.")
    ckptr = ocp.StandardCheckpointer()
    try:
        target = _target_from_metadata(_tree_metadata(ckptr.metadata(path).item_metadata))
        return jax.tree.map(jnp.asarray, ckptr.restore(path, target))
    except Exception as e:
        raise RuntimeError(
            f"Could not read variables from {path} ({_cause(e)}). {_DELETE_HINT}"
        ) from e
    finally:
        ckptr.close()


def _expected_variables(
    model_name: str, num_classes: int, image_size: int | None = None, **model_kwargs: Any
) -> dict[str, Any]:
    from luminet_jax import models  # The zoo is only needed for teachers.

    model = models.get_model(model_name, num_classes=num_classes, **model_kwargs)
    # A ViT's position embedding depends on the input size, so check at the run's size.
    size = image_size or models.input_size(model_name)
    dummy = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), dummy)
    return {
        "params": abstract["params"],
        "batch_stats": abstract.get("batch_stats", {}),
    }


def _flat(tree: Any) -> dict[str, Any]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in flat}


def validate_variables(variables: Any, expected: Any, *, source: str = "variables") -> None:
    """Raises ValueError naming the first entry whose presence or shape differs.

    Args:
      variables: the loaded tree.
      expected: the model's tree (arrays or ShapeDtypeStructs).
      source: where `variables` came from, for the message.
    """
    got, want = _flat(variables), _flat(expected)
    for key in sorted(set(got) | set(want)):
        if key not in got:
            raise ValueError(f"{source}: missing entry {key} (model expects {want[key].shape}).")
        if key not in want:
            raise ValueError(
                f"{source}: unexpected entry {key} with shape {np.shape(got[key])} "
                "(the model has no such variable)."
            )
        if tuple(np.shape(got[key])) != tuple(want[key].shape):
            raise ValueError(
                f"{source}: entry {key} has shape {tuple(np.shape(got[key]))}, "
                f"model expects {tuple(want[key].shape)}."
            )


def load_teacher(
    path: str | os.PathLike,
    model_name: str,
    *,
    num_classes: int,
    image_size: int | None = None,
    **model_kwargs: Any,
) -> dict[str, Any]:
    """Loads a teacher's `{"params", "batch_stats"}` and checks them against the model.

    Args:
      path: one of (1) a directory written by `save_variables`; (2) a training workdir,
        whose latest checkpoint's params and batch_stats are taken; (3) a `.npz` of
        PyTorch-keyed arrays (the reference's state_dict) or a PyTorch checkpoint file
        (`.pth`/`.pt`, read without torch), converted by `models.from_torch`. (A published
        teacher by name, `zoo:NAME`: `teachers.load_teacher`.)
      model_name: the teacher's model name (as `models.get_model`).
      num_classes: the classifier size.
      image_size: the input size the teacher runs at (default: `models.input_size`).
      **model_kwargs: further `models.get_model` fields of the teacher (shape checks only).

    Returns:
      `{"params": ..., "batch_stats": ...}` (batch_stats {} for models without BatchNorm).

    Raises:
      FileNotFoundError: `path` does not exist or the workdir has no checkpoint.
      ValueError: an entry is missing, unexpected or of the wrong shape for the model.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Teacher checkpoint {path} does not exist (expected a save_variables directory, "
            "a training workdir, a .npz of PyTorch-keyed arrays, a PyTorch .pth or zoo:NAME)."
        )
    if os.path.isfile(path):
        from luminet_jax import models, torch_files

        if path.endswith(".npz"):
            with np.load(path) as npz:
                state_dict = dict(npz)
        elif path.endswith(_TORCH_SUFFIXES):
            state_dict = torch_files.load_state_dict(path)
        else:
            raise ValueError(
                f"Teacher file {path} is neither a .npz of PyTorch-keyed arrays nor a PyTorch "
                f"checkpoint ({', '.join(_TORCH_SUFFIXES)})."
            )
        variables = models.from_torch(model_name, state_dict, num_classes=num_classes)
    elif os.path.isdir(os.path.join(path, CKPT_SUBDIR)):
        ckpt = Checkpointer(path)
        try:
            raw = ckpt.restore_raw()
        finally:
            ckpt.close()
        variables = {"params": raw["params"], "batch_stats": raw.get("batch_stats") or {}}
    else:
        variables = load_variables(path)
    variables = {
        "params": variables["params"],
        "batch_stats": variables.get("batch_stats") or {},
    }
    validate_variables(
        variables,
        _expected_variables(model_name, num_classes, image_size, **model_kwargs),
        source=f"teacher {path}",
    )
    return variables
