"""Figures as (fig, ax) pairs, for PNG files and TensorBoard alike. No pyplot state."""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure


def layer_profile_figure(layers: list[dict], title: str) -> tuple[Figure, Axes]:
    """Top-1/2/3 and median of |block output| against block, log scale (the paper's view)."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    x = [row["layer"] for row in layers]
    k = len(layers[0]["top"])
    for j in range(k):
        ax.plot(x, [row["top"][j] for row in layers], marker="o", label=f"top {j + 1}")
    ax.plot(x, [row["median"] for row in layers], marker="s", color="gray", label="median")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xlabel("block (0-based)")
    ax.set_ylabel("|block output| (mean over sequences)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    return fig, ax
