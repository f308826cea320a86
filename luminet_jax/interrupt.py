"""SIGINT/SIGTERM as a flag the training loop reads between steps (saved, then stopped)."""

from __future__ import annotations

import signal
from typing import Any

import jax
import numpy as np


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag that the loop checks between steps."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave the defaults alone
                pass
        return self

    def _handle(self, signum, frame):
        del frame
        self.signum = signum
        # A second Ctrl-C interrupts at once.
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False

    def requested(self, sync: bool) -> bool:
        """Whether to stop now.

        With several processes all must stop at the same step (saving is collective), so
        the flag is only read at `sync` points (log steps), where it is all-gathered.
        """
        if jax.process_count() > 1:
            if not sync:
                return False
            from jax.experimental import multihost_utils  # noqa: PLC0415

            # The decision is the gathered one only: a signal that lands during the gather
            # is seen by every process at the next sync point, never by one alone. Every
            # process takes the (largest) signal one of them got, so all exit alike.
            agreed = int(np.max(multihost_utils.process_allgather(np.asarray(self.signum or 0))))
            if agreed:
                self.signum = agreed
            return agreed > 0
        return self.signum is not None

    def exception(self) -> BaseException:
        if self.signum == signal.SIGTERM:
            return SystemExit(128 + signal.SIGTERM)
        return KeyboardInterrupt()
