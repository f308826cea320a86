"""The paper's figure forms with matplotlib (headless Agg backend): lines and bars."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def line_plot(
    xs: Sequence[float],
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    path: str,
    log2_x: bool = False,
) -> str:
    """One line per series with a shaded ± std band; values in percent.

    Args:
      xs: the x values shared by all series.
      series: label -> (means, stds); NaN entries are skipped.
      log2_x: a base-2 log x axis (batch sizes).

    Returns:
      `path` (a PNG).
    """
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
    for label, (means, stds) in series.items():
        points = [(x, m, s) for x, m, s in zip(xs, means, stds) if not math.isnan(m)]
        if not points:
            continue
        px, pm, ps = zip(*points)
        ax.plot(px, pm, marker="o", label=label)
        lo = [m - (0 if math.isnan(s) else s) for m, s in zip(pm, ps)]
        hi = [m + (0 if math.isnan(s) else s) for m, s in zip(pm, ps)]
        ax.fill_between(px, lo, hi, alpha=0.2)
    if log2_x:
        ax.set_xscale("log", base=2)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{x:g}" for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def bar_plot(
    labels: Sequence[str],
    values: Sequence[float],
    errors: Sequence[float] | None = None,
    *,
    ylabel: str,
    title: str,
    path: str,
) -> str:
    """Bars with value labels (and ± error bars when `errors` are given, NaN = none)."""
    fig, ax = plt.subplots(figsize=(max(4.5, 1.25 * len(labels)), 3.2), dpi=120)
    errs = [0.0] * len(values)
    if errors is not None:
        errs = [0.0 if e is None or math.isnan(e) else e for e in errors]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    bars = ax.bar(range(len(labels)), values, yerr=errs, capsize=4, color=colors[: len(labels)])
    for bar, value, err in zip(bars, values, errs):
        x = bar.get_x() + bar.get_width() / 2
        ax.annotate(
            f"{value:.2f}",
            (x, bar.get_height() + err),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )
    finite = [(v, e) for v, e in zip(values, errs) if not math.isnan(v)]
    if finite:
        low, high = min(v for v, _ in finite), max(v + e for v, e in finite)
        pad = max(1.0, (high - low) * 0.5)
        deepest = min(v - e for v, e in finite)
        if deepest < 0:  # differences: show the bars below zero, with the zero line
            ax.set_ylim(deepest - 0.2 * pad, max(high, 0.0) + pad)
            ax.axhline(0.0, color="black", linewidth=0.8)
        else:
            ax.set_ylim(max(0.0, low - 3 * pad), high + pad)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
