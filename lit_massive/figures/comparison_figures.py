"""The figures `compare` overlays: top-1 and median against depth, attention to massive
tokens against depth, and every head's scores, one series per run x variant (x corpus)."""

from __future__ import annotations

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lit_massive.figures.style import colors, outside_legend, overlap, values

_HORIZONTAL = {"orientation": "horizontal"} if matplotlib.__version_info__ >= (3, 10) else {"vert": False}


def _depth(n_layer: int, relative: bool) -> list[float]:
    """x of each layer: its index, or its relative depth (layer / (layers - 1), 0..1)."""
    return [i / max(n_layer - 1, 1) for i in range(n_layer)] if relative else list(range(n_layer))


def _depth_axis(ax: Axes, relative: bool, n_max: int) -> None:
    if relative:
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("relative depth (layer / (layers - 1))")
    else:
        if n_max <= 40:
            ax.set_xticks(range(n_max))
        ax.set_xlabel("layer (0-based)")


def depth_figure(shown: list[tuple[str, dict]], relative: bool = False) -> Figure:
    """Top-1 (solid) and median (dashed) of |block output| against depth, one color per
    run x variant, log y: where each model's massive activations appear and how large."""
    fig = Figure(figsize=(10.5, 4.8), layout="constrained")  # wide: the legend may be beside the chart
    ax = fig.subplots()
    n_max = max(len(entry["layers"]) for _, entry in shown)
    for i, ((label, entry), color) in enumerate(zip(shown, colors(len(shown)), strict=True)):
        layers, style = entry["layers"], overlap(i)
        x = _depth(len(layers), relative)
        ax.plot(x, values([r["top"][0] for r in layers]), color=color, label=label, **style)
        ax.plot(x, values([r["median"] for r in layers]), color=color, ls="--", **{**style, "marker": None})
    ax.set_yscale("log")
    _depth_axis(ax, relative, n_max)
    ax.set_ylabel("|block output| (mean over windows)\nsolid: top 1, dashed: median")
    ax.set_title("top-1 and median of |block output| against depth")
    ax.grid(True, which="major", alpha=0.3)
    outside_legend(ax, len(shown))
    return fig


def attention_figure(shown: list[tuple[str, dict]], relative: bool = False) -> Figure:
    """Per layer, the share of attention on each window's massive tokens, one line per run x
    variant with head scores."""
    fig = Figure(figsize=(10.5, 4.2), layout="constrained")
    ax = fig.subplots()
    n_max = max(len(entry["attention_to_massive"]) for _, entry in shown)
    for i, ((label, entry), color) in enumerate(zip(shown, colors(len(shown)), strict=True)):
        shares = entry["attention_to_massive"]
        ax.plot(_depth(len(shares), relative), values(shares), color=color, label=label, **overlap(i))
    ax.set_ylim(0.0, 1.05)
    _depth_axis(ax, relative, n_max)
    ax.set_ylabel("attention on massive tokens")
    ax.set_title("attention to massive tokens against depth")
    ax.grid(True, alpha=0.3)
    outside_legend(ax, len(shown))
    return fig


def measured_scores(rows: list[list[float | None]] | None) -> list[float]:
    return [v for row in rows or [] for v in row if v is not None and v == v]


def head_scores_figure(shown: list[tuple[str, dict]]) -> Figure:
    """Every (layer, head) score of each run x variant as a box with its heads as points:
    first-token attention and, beside it, attention on massive tokens."""
    keys = [("head_scores", "attention on token 0")]
    if any(entry.get("massive_token_scores") is not None for _, entry in shown):
        keys.append(("massive_token_scores", "attention on massive tokens"))
    fig = Figure(figsize=(5.0 + 4.0 * len(keys), 1.6 + 0.45 * len(shown)), layout="constrained")
    axes = fig.subplots(1, len(keys), sharey=True, squeeze=False)[0]
    palette = colors(len(shown))
    for ax, (key, title) in zip(axes, keys, strict=True):
        data = [measured_scores(entry.get(key)) for _, entry in shown]
        positions = [i for i, scores in enumerate(data) if scores]
        ax.boxplot([data[i] for i in positions], positions=positions, widths=0.6, showfliers=False,
                   medianprops={"color": "black"}, **_HORIZONTAL)  # fmt: skip
        for i in positions:  # every head, spread a little across the box
            jitter = [((j * 0.618034) % 1.0 - 0.5) * 0.4 for j in range(len(data[i]))]
            ax.scatter(data[i], [i + d for d in jitter], s=8, color=palette[i], alpha=0.6, zorder=3)
        largest = max((v for scores in data for v in scores), default=1.0)
        right = min(1.0, 1.1 * largest) if largest > 0 else 1.0
        ax.set_xlim(-0.01 * right, 1.03 * right)  # a score of 0 or of the largest shows whole
        ax.set_xlabel(f"{title} (mean over windows)")
        ax.set_title(f"head scores: {title}", fontsize="medium")
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(shown)), [label for label, _ in shown], fontsize="small")
    axes[0].invert_yaxis()
    return fig
