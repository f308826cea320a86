"""Table 3's figure: each method's time per batch relative to KD, ours beside the paper's."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def ratio_plot(
    methods: Sequence[str],
    ours: Sequence[float],
    paper: Mapping[str, float],
    *,
    title: str,
    path: str,
    ours_label: str = "ours",
) -> str:
    """Grouped bars per method: our ratio to KD and the paper's (where it quotes one).

    Args:
      methods: the x-axis labels, in order.
      ours: our ratio to KD per method (NaN: not measured, no bar).
      paper: method -> the paper's ratio to KD (absent: no bar).
      path: the PNG written.

    Returns:
      `path`.
    """
    fig, ax = plt.subplots(figsize=(max(6.0, 0.62 * len(methods)), 3.4), dpi=120)
    width = 0.4
    xs = range(len(methods))
    for offset, label, values in (
        (-width / 2, ours_label, list(ours)),
        (width / 2, "paper (PyTorch, GPU)", [paper.get(m, math.nan) for m in methods]),
    ):
        pts = [(x + offset, v) for x, v in zip(xs, values) if not math.isnan(v)]
        if not pts:
            continue
        px, pv = zip(*pts)
        bars = ax.bar(px, pv, width=width, label=label)
        for bar, value in zip(bars, pv):
            ax.annotate(
                f"{value:.2f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=6,
            )
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(methods, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("time per batch / KD's")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
