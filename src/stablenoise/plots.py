"""Plots of results (matplotlib, headless). Kept apart from the algorithms."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: Sequence[float], path: str | Path, title: str = "") -> None:
    """Stability at every optimization iteration."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(range(len(history)), history, marker=".", lw=1)
    ax.set(xlabel="iteration", ylabel="inversion stability", title=title[:60])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
