"""The report's pictures as PNG bytes: decile, sweep and forest plots (through :mod:`stablenoise.plots`) and image
thumbnails."""

from __future__ import annotations

import io
import math
from pathlib import Path

from ..plots import png, pyplot

MIN_TILE = 96  # smaller images (the 32x32 shapes world) are enlarged, pixel for pixel
MAX_TILE = 192  # larger ones are shrunk: the HTML report embeds every tile


def _error_bars(ax, xs, cis, scale: float = 1.0, label=None) -> None:
    """Points with their 95% intervals; unknown points (None) are left out."""
    pts = [(x, c) for x, c in zip(xs, cis) if c is not None]
    if pts:
        # A percentile interval of few resamples can miss the mean (matplotlib refuses a negative bar):
        # the bar then stops at the point.
        ax.errorbar([x for x, _ in pts], [scale * c["mean"] for _, c in pts],
                    yerr=[[max(0.0, scale * (c["mean"] - c["lo"])) for _, c in pts],
                          [max(0.0, scale * (c["hi"] - c["mean"])) for _, c in pts]],
                    marker="o", capsize=3, label=label)


def plot_deciles(deciles: dict[str, list], percent: dict[str, bool], title: str) -> bytes:
    """Mean reward per within-prompt stability decile, one panel per reward (0/1 rewards in %)."""
    plt = pyplot()
    n = len(deciles)
    cols = min(n, 3)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(4 * cols, 3 * math.ceil(n / cols)), squeeze=False)
    for ax, (reward, cis) in zip(axes.ravel(), deciles.items()):
        _error_bars(ax, range(1, len(cis) + 1), cis, 100 if percent[reward] else 1)
        ax.set(xlabel="stability decile (1 = least stable)", ylabel=f"{reward} (%)" if percent[reward] else reward,
               xticks=range(1, len(cis) + 1))
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle(title[:100], fontsize=10)
    return png(fig)


def plot_sweep(xlabel: str, xs: list, series: dict[str, dict[str, list]], percent: dict[str, bool],
               title: str) -> bytes:
    """Each method's gain over random against the swept setting: ``series[reward][method]`` = one interval
    per x. One panel per reward (0/1 rewards in percentage points); the legend below the panels."""
    plt = pyplot()
    n = len(series)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 4), squeeze=False)
    for ax, (reward, methods) in zip(axes[0], series.items()):
        ax.axhline(0, color="grey", lw=0.8)
        for i, (method, cis) in enumerate(methods.items()):
            # a small horizontal offset per method keeps overlapping error bars apart
            spread = (i - (len(methods) - 1) / 2) * 0.015 * (max(xs) - min(xs) or 1)
            _error_bars(ax, [x + spread for x in xs], cis, 100 if percent[reward] else 1, label=method)
        ax.set(xlabel=xlabel, ylabel=f"{reward}: gain over random" + (" (pp)" if percent[reward] else ""),
               xticks=xs)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.suptitle(title[:120], fontsize=10)
    fig.tight_layout()
    if handles:
        rows = math.ceil(len(labels) / 3)
        fig.subplots_adjust(bottom=0.18 + 0.06 * rows)
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    return png(fig, tight=False)


def thumbnail(path: Path) -> bytes | None:
    """A tile of an image grid, or None if the image cannot be read (or claims a decompression bomb's size)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        return None
    side = max(im.size)
    if side < MIN_TILE:
        factor = math.ceil(MIN_TILE / side)
        im = im.resize((im.width * factor, im.height * factor), Image.NEAREST)
    elif side > MAX_TILE:
        im.thumbnail((MAX_TILE, MAX_TILE), Image.LANCZOS)
    buffer = io.BytesIO()
    im.save(buffer, format="PNG")
    return buffer.getvalue()


def plot_forest(rows: list[tuple[str, dict]], xlabel: str, scale: float = 1.0) -> bytes:
    """One row per (label, interval): each method's difference from a random seed, a vertical line at 0."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.1))
    ys = list(range(len(rows)))[::-1]
    for y, (_, ci) in zip(ys, rows):
        colour = "C2" if ci["lo"] > 0 else "C3" if ci["hi"] < 0 else "C7"
        ax.errorbar([scale * ci["mean"]], [y], xerr=[[max(0.0, scale * (ci["mean"] - ci["lo"]))],
                                                     [max(0.0, scale * (ci["hi"] - ci["mean"]))]],
                    fmt="o", color=colour, capsize=3)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(ys, [label[:70] for label, _ in rows], fontsize=8)
    ax.set_xlabel(xlabel)
    return png(fig)
