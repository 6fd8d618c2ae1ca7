"""Plots (matplotlib, headless): the one place that sets matplotlib up and turns a figure into a PNG, and the
optimization curve the CLI saves. Kept apart from the algorithms; the bench's figures build on it."""

from __future__ import annotations

import io
from typing import Sequence


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (no display needed), imported only when a plot is made.

    Returns:
        The ``matplotlib.pyplot`` module.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig, tight: bool = True, dpi: int = 100) -> bytes:
    """A figure as PNG bytes; the figure is closed.

    Args:
        fig: a matplotlib figure.
        tight: lay it out with ``tight_layout`` first.
        dpi: resolution.

    Returns:
        The PNG file's bytes.
    """
    plt = pyplot()
    buffer = io.BytesIO()
    if tight:
        fig.tight_layout()
    fig.savefig(buffer, dpi=dpi, format="png")
    plt.close(fig)
    return buffer.getvalue()


def plot_history(history: Sequence[float], title: str = ""):
    """Stability at every optimization iteration, as a PIL image (saved with the item it belongs to).

    Args:
        history: the stability at each iteration.
        title: the plot's title (its first 60 characters).

    Returns:
        An RGB PIL image.
    """
    from PIL import Image

    fig, ax = pyplot().subplots(figsize=(5, 3))
    ax.plot(range(len(history)), history, marker=".", lw=1)
    ax.set(xlabel="iteration", ylabel="inversion stability", title=title[:60])
    return Image.open(io.BytesIO(png(fig, dpi=110))).convert("RGB")
