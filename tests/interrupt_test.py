"""interrupt.StopRequest: with several processes, stopping is decided by the all-gathered flag
(a signal that lands during the gather must not stop one process alone)."""

import signal

import numpy as np
import pytest
from jax.experimental import multihost_utils

from luminet_jax import interrupt


@pytest.fixture
def two_processes(monkeypatch):
    """Pretends to be process 0 of 2; `others` is what the other process contributes."""
    state = {"others": 0, "during_gather": None}
    monkeypatch.setattr(interrupt.jax, "process_count", lambda: 2)

    def gather(x):
        if state["during_gather"] is not None:  # the signal arrives while gathering
            state["during_gather"]()
            state["during_gather"] = None
        return np.asarray([int(x), state["others"]])

    monkeypatch.setattr(multihost_utils, "process_allgather", gather)
    return state


def test_signal_during_the_gather_waits_for_the_next_sync(two_processes):
    with interrupt.StopRequest() as stop:
        two_processes["during_gather"] = lambda: stop._handle(signal.SIGTERM, None)
        assert not stop.requested(sync=True)  # the other process gathered a 0 as well
        assert not stop.requested(sync=False)  # only sync points decide
        assert stop.requested(sync=True)  # now both see it
        assert isinstance(stop.exception(), SystemExit) and stop.exception().code == 143


def test_other_process_signal_stops_this_one_with_its_code(two_processes):
    with interrupt.StopRequest() as stop:
        assert not stop.requested(sync=True)
        two_processes["others"] = int(signal.SIGTERM)
        assert not stop.requested(sync=False)
        assert stop.requested(sync=True)
        assert stop.exception().code == 128 + signal.SIGTERM


def test_one_process_stops_at_once_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with interrupt.StopRequest() as stop:
        assert not stop.requested(sync=False)
        stop._handle(signal.SIGINT, None)
        assert stop.requested(sync=False)
        assert isinstance(stop.exception(), KeyboardInterrupt)
    assert signal.getsignal(signal.SIGTERM) is before
