"""The 1-D "data" mesh, its shardings, host-local -> global batches, and the sharded steps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
BATCH = P(DATA_AXIS)  # a global batch: its leading axis split over "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis "data" over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of the state and the teacher's variables: a full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding of a global batch: its leading axis split over "data"."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_global_batch(global_batch: int, mesh: Mesh) -> None:
    """Raises ValueError unless `global_batch` splits evenly over the devices and processes.

    Args:
      global_batch: the global batch size (over all processes).
      mesh: the data mesh.
    """
    num_devices = mesh.devices.size
    if global_batch <= 0 or global_batch % num_devices:
        raise ValueError(
            f"global batch {global_batch} is not divisible by {num_devices} devices; "
            f"choose a batch size that is a multiple of {num_devices} "
            f"(e.g. {max(1, round(global_batch / num_devices)) * num_devices})."
        )
    if global_batch % jax.process_count():
        raise ValueError(
            f"global batch {global_batch} is not divisible by {jax.process_count()} processes."
        )


def to_global(local_batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's slice of a batch into global arrays sharded over "data".

    Args:
      local_batch: this process's part of the batch (numpy or jax arrays, leading axis =
        global batch / process count).
      mesh: the data mesh.

    Returns:
      The same structure, with global `jax.Array`s sharded by `batch_sharding(mesh)`.
    """
    sharding = batch_sharding(mesh)
    leaves = jax.tree.leaves(local_batch)
    if leaves:
        check_global_batch(np.shape(leaves[0])[0] * jax.process_count(), mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )


def shard_train_step(train_step: Callable, mesh: Mesh, batch_spec: P = BATCH) -> Callable:
    """Jits `train_step(state, teacher_variables, batch)` to run per shard over "data".

    The step must have been built with `axis_name="data"` (and the models with
    `axis_name="data"` too). State and teacher are replicated, the batch is split along
    its leading axis, and the input state is donated (so `teacher_variables` must not
    share buffers with it; pass copies when both come from one tree). `check_vma=True`
    (the default) is required: the step relies on it for the psum of the replicated
    parameters' gradients.

    Args:
      train_step: from `steps.make_train_step(..., axis_name="data")`.
      mesh: the data mesh.
      batch_spec: how the batch splits: along its leading axis (several seeds in one job:
        `members.MEMBER_BATCH`, along axis 1).

    Returns:
      The jitted `fn(state, teacher_variables, batch) -> (state, metrics)`.
    """
    sharded = jax.shard_map(
        train_step,
        mesh=mesh,
        in_specs=(P(), P(), batch_spec),
        out_specs=(P(), P()),
        check_vma=True,
    )
    return jax.jit(sharded, donate_argnums=0)


def shard_eval_step(eval_step: Callable, mesh: Mesh) -> Callable:
    """Jits `eval_step(variables, batch)` (built with `axis_name="data"`) over "data".

    Args:
      eval_step: from `steps.make_eval_step(model, axis_name="data")`.
      mesh: the data mesh.

    Returns:
      The jitted `fn(variables, batch) -> sums`, replicated sums over the global batch.
    """
    sharded = jax.shard_map(
        eval_step, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P(), check_vma=True
    )
    return jax.jit(sharded)
