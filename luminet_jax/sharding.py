"""The 1-D "data" mesh, its shardings, host-local -> global batches, and the sharded steps."""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
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
        `seed_runs.RUNS_BATCH`, along axis 1).

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


THREAD = "luminet-prefetch"  # the name of Prefetch's threads


class Prefetch:
    """Global batches from process-local host batches, put on the devices ahead of use.

    A background thread takes the next batches of `local_batches` and assembles them into
    global arrays (`to_global`: the host-to-device copies) while the training thread runs
    the current step; at most `depth` batches wait on the devices. Batches come out in
    order; an error of the source is raised by the `next` that would have returned its
    batch, and the end of the source ends the iteration. The thread stops when the
    `Prefetch` is closed or garbage-collected.
    """

    _END = object()

    def __init__(self, local_batches: Iterable[dict[str, Any]], mesh: Mesh, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        # The thread holds the queue and the event, not `self`: dropping the Prefetch stops it.
        args = (iter(local_batches), mesh, self._queue, self._stop)
        threading.Thread(target=Prefetch._fill, args=args, daemon=True, name=THREAD).start()
        weakref.finalize(self, self._stop.set)

    @staticmethod
    def _fill(batches, mesh, out: queue.Queue, stop: threading.Event) -> None:
        def put(item) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for local in batches:
                if not put(to_global(local, mesh)):
                    return
        except BaseException as e:  # noqa: BLE001  (handed to the consumer)
            put(e)
            return
        put(Prefetch._END)

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        item = self._queue.get()
        if item is self._END:
            self._queue.put(item)  # the end stays the end
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stops the thread (batches not yet taken are dropped)."""
        self._stop.set()
