"""Figures of the MLP output projections (super weights): (fig, ax) pairs, no pyplot state,
like `figures.figures`."""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lit_massive.figures import style


def mlp_down_figure(rows: list[dict], candidates: list[dict], title: str) -> tuple[Figure, Axes]:
    """Per block, the output projection's largest |input| and largest |output| (means over
    windows) against depth, log y; blocks with a super-weight candidate are marked with its
    (row j, col i). A super weight shows as an input spike that turns into an output spike
    in the same block, the first of the massive activations downstream."""
    fig = Figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.subplots()
    layers = [r["layer"] for r in rows]
    inputs = style.values([r["input"]["value"] for r in rows])  # null: every window overflowed, a gap
    outputs = style.values([r["output"]["value"] for r in rows])
    ax.plot(layers, inputs, marker="o", color="tab:blue", label="largest |input| (x_i)")
    ax.plot(layers, outputs, marker="s", color="tab:red", label="largest |output| (y_j)")
    output = {r["layer"]: r["output"]["value"] for r in rows}
    for layer in sorted({c["layer"] for c in candidates}):
        best = max((c for c in candidates if c["layer"] == layer), key=lambda c: c["windows"])
        ax.annotate(f"W[{best['row']}, {best['col']}]", (layer, output[layer]), textcoords="offset points",
                    xytext=(6, -4), va="top", fontsize="small", color="tab:red")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xticks(layers)
    ax.set_xlabel("layer (0-based)")
    ax.set_ylabel("MLP output projection\n(mean over windows)")
    ax.grid(alpha=0.3)
    style.legend(ax)
    ax.set_title(title + ("" if candidates else "\nno super-weight candidate (no massive output top-1)"))
    return fig, ax
