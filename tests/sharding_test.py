"""luminet_jax/sharding.py's Prefetch: host batches put on the devices ahead of use."""

from __future__ import annotations

import threading
import time

import chex
import numpy as np
import pytest

from luminet_jax import sharding


def _local(n: int):
    for k in range(n):
        yield {"image": np.full((16, 2), k, np.float32), "label": np.arange(16, dtype=np.int32)}


def test_prefetch_yields_the_batches_in_order_as_global_arrays():
    mesh = sharding.make_mesh()
    got = list(sharding.Prefetch(_local(5), mesh))
    assert [int(b["image"][0, 0]) for b in got] == [0, 1, 2, 3, 4]
    for batch in got:
        assert batch["image"].sharding == sharding.batch_sharding(mesh)
        chex.assert_trees_all_equal(np.asarray(batch["label"]), np.arange(16, dtype=np.int32))


def test_prefetch_runs_at_most_depth_batches_ahead_and_raises_the_sources_error():
    taken = []

    def source():
        for k in range(100):
            taken.append(k)
            if k == 6:
                raise OSError("disk gone")
            yield {"x": np.zeros((8,), np.float32) + k}

    batches = sharding.Prefetch(source(), sharding.make_mesh(), depth=2)
    assert int(next(batches)["x"][0]) == 0
    time.sleep(0.5)  # room to run further ahead, were it not bounded
    # One taken by the consumer, two waiting in the queue, one held by the blocked thread.
    assert len(taken) <= 4, taken
    assert [int(next(batches)["x"][0]) for _ in range(5)] == [1, 2, 3, 4, 5]
    with pytest.raises(OSError, match="disk gone"):
        next(batches)


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == sharding.THREAD]


def test_prefetch_stops_its_thread_when_dropped():
    deadline = time.monotonic() + 30  # earlier tests' threads end within 0.1 s of their drop
    while _prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _prefetch_threads()
    batches = sharding.Prefetch(_local(1000), sharding.make_mesh(), depth=1)
    next(batches)
    assert len(_prefetch_threads()) == 1
    del batches
    deadline = time.monotonic() + 30
    while _prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _prefetch_threads()
