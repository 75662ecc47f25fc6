"""Figures of the massive dims of queries and keys. (fig, axes) pairs, no pyplot state, like
`figures.figures`."""

from __future__ import annotations

import math

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lit_massive.figures import style

COLUMNS = 4  # panels per row


def relative_norms(norms: list[list[list[float | None]]]) -> np.ndarray:
    """(L, H, n) mean norms, each head's row divided by its mean over the n dims: the
    quantity the massive criterion compares with its ratio. Unmeasured entries are NaN."""
    x = np.array([[[math.nan if v is None else v for v in head] for head in layer] for layer in norms], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return x / np.nanmean(x, axis=-1, keepdims=True)


def dim_norms_figure(
    norms: list[list[list[float | None]]], ratio: float, title: str, head_label: str = "head"
) -> tuple[Figure, list[Axes]]:
    """One panel per layer: heads x dims, each dim's norm over the window's tokens (mean
    over windows) over its head's mean, on one log colour scale for every layer, so a
    massive dim (above `ratio`, marked on the colour bar) stands out wherever it is. One
    figure for every layer: drawing one per layer would cost seconds each on a deep model."""
    x = relative_norms(norms)
    n_layer, n_head, n_dim = x.shape
    cols = min(COLUMNS, n_layer)
    rows = math.ceil(n_layer / cols)
    panel_w, panel_h = max(2.6, 1.0 + 0.025 * n_dim), max(2.0, 0.9 + 0.06 * n_head)
    fig = Figure(figsize=(cols * panel_w + 1.5, rows * panel_h + 0.8), layout="constrained")
    axes = list(np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel())
    positive = x[np.isfinite(x) & (x > 0)]
    low, high = (positive.min(), positive.max()) if positive.size else (1.0, 1.0)
    norm = LogNorm(vmin=min(low, ratio / 10) if ratio > 0 else low, vmax=max(high, ratio * 1.0001, low * 1.0001))
    cmap = colormaps[style.PEAKS].with_extremes(bad=style.UNMEASURED, under="black")
    image = None
    for layer, ax in enumerate(axes):
        if layer >= n_layer:
            ax.set_visible(False)
            continue
        image = ax.imshow(np.ma.masked_invalid(x[layer]), norm=norm, cmap=cmap, aspect="auto", interpolation="nearest")
        ax.set_title(f"layer {layer}", fontsize="small")
        ax.tick_params(labelsize="x-small")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if layer % cols == 0:
            ax.set_ylabel(f"{head_label} (0-based)", fontsize="x-small")
        if layer >= n_layer - cols:
            ax.set_xlabel("dim (0-based)", fontsize="x-small")
    label = "norm over tokens / head's mean" + (f"\n(line: {ratio:g}, massive above)" if ratio > 0 else "")
    bar = fig.colorbar(image, ax=axes, shrink=min(1.0, 4 / max(rows, 1)))
    bar.set_label(label, fontsize="small")
    if ratio > 0:
        bar.ax.axhline(ratio, color="cyan", lw=1.5)
    fig.suptitle(title)
    return fig, axes[:n_layer]
