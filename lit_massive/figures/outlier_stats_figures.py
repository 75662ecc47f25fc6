"""Figures of the outlier statistics against depth. (fig, axes) pairs, no pyplot state, like
`figures.figures`."""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lit_massive.figures import style

PANELS = (  # key, y label, colour, log y
    ("kurtosis", "kurtosis of per-dim RMS\nmean_d s^4 / (mean_d s^2)^2", "tab:red", True),
    ("top_direction_share", "top-direction share\nsigma_1^2 / sum sigma^2", "tab:blue", False),
    ("matrix_entropy", "matrix entropy\n(normalised, 0 to 1)", "tab:green", False),
)


def outlier_figure(layers: list[dict], title: str) -> tuple[Figure, list[Axes]]:
    """Kurtosis (log y), top-direction share and matrix entropy against layer, one panel
    each on a shared x axis: each has its own scale (kurtosis can reach thousands, the other
    two lie in [0, 1]). Unmeasured layers are gaps."""
    fig = Figure(figsize=(7, 6.5), layout="constrained")
    axes = list(fig.subplots(len(PANELS), 1, sharex=True))
    x = [row["layer"] for row in layers]
    for ax, (key, label, color, log) in zip(axes, PANELS, strict=True):
        values = style.values([row.get(key) for row in layers])
        ax.plot(x, values, marker="o", color=color)
        if log and any(v > 0 for v in values):  # NaN > 0 is False: only measured values count
            ax.set_yscale("log")
        elif not log:
            ax.set_ylim(0.0, 1.05)
        ax.set_ylabel(label, fontsize="small")
        ax.grid(True, which="major", alpha=0.3)
    axes[-1].set_xticks(x)
    axes[-1].set_xlabel("layer (0-based)")
    axes[0].set_title(title)
    return fig, axes
