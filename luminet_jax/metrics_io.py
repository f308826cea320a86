"""Metric output: `workdir/metrics.jsonl` (one JSON object per line) and TensorBoard.

Only process 0 writes. TensorBoard event files are written with the tensorboard package's
own writer (no TensorFlow) when it is importable; the jsonl file is the record that
`experiments/` reads.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"


def _plain(value: Any) -> Any:
    """A JSON-serializable Python value (numpy/jax scalars -> float/int; NaN kept as NaN)."""
    if isinstance(value, (bool, str)) or value is None:
        return value
    array = np.asarray(value)
    if array.ndim == 0:
        return array.item()
    return array.tolist()


class MetricWriter:
    """Appends metrics to `workdir/metrics.jsonl` and TensorBoard (process 0 only).

    Args:
      workdir: the run's directory (created if needed).
      tensorboard: also write TensorBoard event files to `workdir/tb` when the tensorboard
        package is importable.
    """

    def __init__(self, workdir: str, *, tensorboard: bool = True):
        self._active = jax.process_index() == 0
        self._path = os.path.join(workdir, METRICS_FILE)
        self._tb = None
        if not self._active:
            return
        os.makedirs(workdir, exist_ok=True)
        if tensorboard:
            try:
                from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: PLC0415
                from tensorboard.summary.writer import event_file_writer  # noqa: PLC0415
            except ImportError:
                return
            self._protos = event_pb2, summary_pb2
            self._tb = event_file_writer.EventFileWriter(os.path.join(workdir, "tb"))

    @property
    def path(self) -> str:
        """The jsonl file's path."""
        return self._path

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Writes one record `{"step": step, **metrics}`.

        Args:
          step: the global step the metrics belong to.
          metrics: name -> scalar (numpy, jax or Python), or strings/bools for the jsonl.
        """
        if not self._active:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        with open(self._path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            event_pb2, summary_pb2 = self._protos
            values = [
                summary_pb2.Summary.Value(tag=name, simple_value=float(value))
                for name, value in record.items()
                if name != "step" and isinstance(value, int | float) and not isinstance(value, bool)
            ]
            event = event_pb2.Event(step=int(step), summary=summary_pb2.Summary(value=values))
            self._tb.add_event(event)
            self._tb.flush()

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path: str) -> list[dict[str, Any]]:
    """Reads a metrics.jsonl file (or a workdir holding one) into a list of records.

    Args:
      path: the file, or the directory that contains `metrics.jsonl`.

    Returns:
      The records in file order ([] when the file does not exist).
    """
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def best_and_last(records: list[dict[str, Any]], key: str = "eval/top1") -> tuple[float, float]:
    """The maximum and the final value of `key` over `records` (NaN when absent).

    Records of a resumed run may repeat steps; the last record written for a step wins.
    """
    by_step: dict[int, float] = {}
    for record in records:
        if key in record:
            by_step[record["step"]] = record[key]
    if not by_step:
        return math.nan, math.nan
    last = by_step[max(by_step)]
    return max(by_step.values()), last
