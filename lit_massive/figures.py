"""Figures as (fig, ax) pairs, for PNG files and TensorBoard alike. No pyplot state."""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure

NAN = float("nan")


def _values(values: list[float | None]) -> list[float]:
    """Unmeasured (null) values become gaps in the line."""
    return [NAN if v is None else v for v in values]


def layer_profile_figure(layers: list[dict], title: str) -> tuple[Figure, Axes]:
    """Top-1/2/3 and median of |block output| against block, log scale (the paper's view)."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    x = [row["layer"] for row in layers]
    k = len(layers[0]["top"])
    for j in range(k):
        ax.plot(x, _values([row["top"][j] for row in layers]), marker="o", label=f"top {j + 1}")
    ax.plot(x, _values([row["median"] for row in layers]), marker="s", color="gray", label="median")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xlabel("block (0-based)")
    ax.set_ylabel("|block output| (mean over sequences)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    return fig, ax


def profiles_figure(variants: dict[str, list[dict]], title: str) -> tuple[Figure, Axes]:
    """Every variant's top-1 (solid) and median (dashed) against block, on one chart."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    for name, layers in variants.items():
        x = [row["layer"] for row in layers]
        (line,) = ax.plot(x, _values([row["top"][0] for row in layers]), marker="o", label=f"{name} top 1")
        ax.plot(
            x,
            _values([row["median"] for row in layers]),
            ls="--",
            color=line.get_color(),
            label=f"{name} median",
        )
    ax.set_yscale("log")
    ax.set_xlabel("block (0-based)")
    ax.set_ylabel("|block output| (mean over sequences)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return fig, ax


def change_figure(changes: dict[str, list[float | None]], title: str) -> tuple[Figure, Axes]:
    """% change of top-1 vs the baseline, per block, one line per variant."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    for name, pct in changes.items():
        ax.plot(range(len(pct)), _values(pct), marker="o", label=name)
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set_xlabel("block (0-based)")
    ax.set_ylabel("top-1 change vs baseline (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return fig, ax


def head_heatmap(
    scores: list[list[float]], title: str, label: str = "mean attention on token 0"
) -> tuple[Figure, Axes]:
    """Layers x heads grid of a head score (first-token or massive-token attention)."""
    n_layer, n_head = len(scores), len(scores[0])
    fig = Figure(figsize=(1.5 + 0.45 * n_head, 1.2 + 0.4 * n_layer), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow([_values(row) for row in scores], vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label=label)
    ax.set_xticks(range(n_head))
    ax.set_yticks(range(n_layer))
    ax.set_xlabel("head (0-based)")
    ax.set_ylabel("layer (0-based)")
    ax.set_title(title)
    return fig, ax


def head_ranking_figure(ranked: list[tuple[int, int, float]], top: int, title: str) -> tuple[Figure, Axes]:
    """Bars of the `top` highest and the rest (lowest) heads, as (layer, head) labels."""
    fig = Figure(figsize=(7, 0.3 * len(ranked) + 1.2), layout="constrained")
    ax = fig.subplots()
    labels = [f"({layer}, {head})" for layer, head, _ in ranked]
    colors = ["tab:red" if i < top else "tab:blue" for i in range(len(ranked))]
    ax.barh(range(len(ranked)), [s for _, _, s in ranked], color=colors)
    ax.set_yticks(range(len(ranked)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("mean attention on token 0 (red: top, blue: bottom)")
    ax.set_title(title)
    return fig, ax


def sweep_figure(ks: list[int], mean_top1_pct: list[float | None], title: str) -> tuple[Figure, Axes]:
    """Mean (over blocks) top-1 change against the number of pruned heads."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot(ks, _values(mean_top1_pct), marker="o")
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("heads pruned (k)")
    ax.set_ylabel("mean top-1 change vs baseline (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return fig, ax


def feature_view_figure(
    values: list[list[float]], tokens: list[str], dims: list[int], title: str
) -> tuple[Figure, Axes]:
    """|block output| of one text as a 3D plot (the paper's figure 1): one line per token
    along the feature dims; the detected massive dims are the dim axis's tick labels."""
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    n_dim = len(values[0])
    for t, row in enumerate(values):
        ax.plot(range(n_dim), [t] * n_dim, row, lw=0.8)
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.set_yticks(range(len(tokens)), tokens, fontsize="small")
    ax.set_xlabel("feature dim (massive dims labelled)")
    ax.set_zlabel("|block output|")
    ax.set_title(title)
    ax.view_init(elev=25, azim=-60)
    return fig, ax


def components_figure(entries: list[dict], title: str) -> tuple[Figure, Axes]:
    """For one (dim, position), per block: what enters (line), what attention and the MLP
    add (bars), and the block output (line): which part creates and which maintains it."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    x = [e["layer"] for e in entries]
    ax.bar([i - 0.2 for i in x], [e["attn"] for e in entries], width=0.4, label="attention adds")
    ax.bar([i + 0.2 for i in x], [e["mlp"] for e in entries], width=0.4, label="MLP adds")
    ax.plot(x, [e["resid_in"] for e in entries], color="gray", marker=".", label="enters block")
    ax.plot(
        x,
        [e["resid_in"] + e["attn"] + e["mlp"] for e in entries],
        color="black",
        marker="o",
        label="block output",
    )
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set_xticks(x)
    ax.set_xlabel("block (0-based)")
    ax.set_ylabel("value (mean over sequences)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return fig, ax


def attention_to_massive_figure(values: list[float | None], title: str) -> tuple[Figure, Axes]:
    """Per block, the share of all attention mass on the window's massive tokens (the
    paper's attention-concentration view); 0 where a block's windows have none."""
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(range(len(values)), _values(values), marker="o", color="tab:purple")
    ax.set_ylim(0.0, 1.05)
    ax.set_xticks(range(len(values)))
    ax.set_xlabel("block (0-based)")
    ax.set_ylabel("attention on massive tokens")
    ax.grid(alpha=0.3)
    ax.set_title(title)
    return fig, ax


def received_figure(received: list[list[float | None]], title: str) -> tuple[Figure, Axes]:
    """Blocks x leading key positions: the mean attention each position receives (over heads,
    queries and windows); a bright column away from 0 is a position-specific sink."""
    n_layer, n_pos = len(received), len(received[0])
    fig = Figure(figsize=(1.5 + 0.4 * n_pos, 1.2 + 0.35 * n_layer), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow([_values(row) for row in received], vmin=0.0, vmax=1.0, cmap="magma", aspect="auto")
    fig.colorbar(image, ax=ax, label="mean attention received")
    ax.set_xticks(range(n_pos))
    ax.set_yticks(range(n_layer))
    ax.set_xlabel("key position (0-based)")
    ax.set_ylabel("block (0-based)")
    ax.set_title(title)
    return fig, ax
