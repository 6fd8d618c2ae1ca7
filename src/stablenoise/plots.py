"""Plots of results (matplotlib, headless). Kept apart from the algorithms."""

from __future__ import annotations

import io
from typing import Sequence


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: Sequence[float], title: str = ""):
    """Stability at every optimization iteration, as a PIL image (saved with the item it belongs to)."""
    from PIL import Image

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(range(len(history)), history, marker=".", lw=1)
    ax.set(xlabel="iteration", ylabel="inversion stability", title=title[:60])
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format="png")
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
