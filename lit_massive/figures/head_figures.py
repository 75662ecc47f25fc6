"""Figures of the attention internals: per-head grids on any scale, the value-state drain
and the sink rate against depth. (fig, ax) pairs, no pyplot state, like `figures.figures`."""

from __future__ import annotations

import math

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from lit_massive.figures import style
from lit_massive.figures.figures import share_per_layer_figure


def head_grid(
    rows: list[list[float | None]],
    title: str,
    label: str,
    diverging: bool = False,
    pruned: list[list[int]] = (),
    log: bool = False,
) -> tuple[Figure, Axes]:
    """Layers x heads grid of a per-head figure on its own scale: 0 to the largest value;
    `diverging`, symmetric around 0 (a cosine, a logit gap); `log`, a log scale over the
    positive values (norms: a dormant head 1000x below the rest stands out). Unmeasured heads
    grey, pruned ones crossed out."""
    n_layer, n_head = len(rows), len(rows[0])
    fig = Figure(figsize=(max(4.5, 1.5 + 0.45 * n_head), max(3.0, 1.2 + 0.4 * n_layer)), layout="constrained")
    ax = fig.subplots()
    values = [style.values(row) for row in rows]
    finite = [abs(v) for row in values for v in row if not math.isnan(v)]
    largest = max(finite, default=0.0) or 1.0
    vmin, name = (-largest, style.DIVERGING) if diverging else (0.0, style.SEQUENTIAL)
    cmap = colormaps[name].with_extremes(bad=style.UNMEASURED)  # not white: a 0 on RdBu_r is white
    positive = [v for v in finite if v > 0]
    if log and positive:
        vmin = min(positive)
        norm = LogNorm(vmin=vmin, vmax=max(largest, vmin * 1.0001))
        image = ax.imshow(values, norm=norm, cmap=cmap, aspect="auto")
    else:
        image = ax.imshow(values, vmin=vmin, vmax=largest, cmap=cmap, aspect="auto")
    kind = "log scale" if log and positive else "scale"
    scale = f"{kind} {vmin:.3g} to {largest:.3g}" if finite and max(finite) > 0 else "every value is 0"
    unmeasured = any(math.isnan(v) for row in values for v in row)
    fig.colorbar(image, ax=ax, label=f"{label}\n({scale}" + ("; grey: not measured)" if unmeasured else ")"))
    if pruned:
        ax.scatter([h for _, h in pruned], [layer for layer, _ in pruned], marker="x", s=90, c="black", lw=2.5)
    ax.set_xticks(range(n_head))
    ax.set_yticks(range(n_layer))
    ax.set_xlabel("head (0-based)")
    ax.set_ylabel("layer (0-based)")
    ax.set_title(title)
    return fig, ax


def value_drain_figure(
    first: list[list[float | None]], rest: list[list[float | None]], title: str
) -> tuple[Figure, Axes]:
    """Per layer, the value norm of the first token against that of the others: every head
    as a dot, the mean over heads as a line (log y). The first token's values far below the
    rest's is the value-state drain of a sink."""
    fig = Figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.subplots()
    for rows, color, label in ((first, "tab:red", "first token ||v_0||"), (rest, "tab:blue", "other tokens ||v_j||")):
        for layer, row in enumerate(rows):
            ax.scatter([layer] * len(row), style.values(row), s=10, color=color, alpha=0.3, lw=0)
        means = [head_mean(row) for row in rows]
        ax.plot(range(len(rows)), style.values(means), marker="o", color=color, label=f"{label}, mean over heads")
    ax.set_yscale("log")
    ax.set_xticks(range(len(first)))
    ax.set_xlabel("layer (0-based)")
    ax.set_ylabel("value norm (dots: heads)")
    ax.grid(alpha=0.3)
    style.legend(ax)
    ax.set_title(title)
    return fig, ax


def sink_rate_figure(rates: list[float | None], epsilon: float, title: str) -> tuple[Figure, Axes]:
    """Per layer, the share of (window, head) pairs that sink: alpha_0 above `epsilon` (Gu et al.)."""
    ylabel = f"sink rate (share of (window, head)\nwith alpha_0 > {epsilon:g})"
    return share_per_layer_figure(rates, title, ylabel, "tab:green")


def head_mean(row: list[float | None]) -> float | None:
    """The mean over a layer's measured heads (None where none is)."""
    values = [v for v in row if v is not None]
    return sum(values) / len(values) if values else None
