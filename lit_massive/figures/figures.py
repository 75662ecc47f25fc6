"""Figures as (fig, ax) pairs, for PNG files and TensorBoard alike. No pyplot state; the
colours, line styles and legends are figures/style.py's."""

from __future__ import annotations

import math

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d import proj3d

from lit_massive.figures import style


def layer_profile_figure(layers: list[dict], title: str) -> tuple[Figure, Axes]:
    """Top-1/2/3 and median of |block output| against layer, log scale (the paper's view)."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    x = [row["layer"] for row in layers]
    k = len(layers[0]["top"])
    for j in range(k):
        ax.plot(x, style.values([row["top"][j] for row in layers]), marker="o", label=f"top {j + 1}")
    ax.plot(x, style.values([row["median"] for row in layers]), marker="s", color="gray", label="median")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xlabel("layer (0-based)")
    ax.set_ylabel("|block output| (mean over windows)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    style.legend(ax)
    return fig, ax


MIN_PCT_SPAN = 1.0  # a % change axis spans at least +-1 %, so a 0.1 % change looks small


def _symmetric_pct_axis(ax: Axes, values: list[float | None], axis: str = "y") -> None:
    """A % change axis symmetric about 0, at least +-MIN_PCT_SPAN, with the zero line drawn."""
    largest = max((abs(v) for v in values if v is not None and v == v), default=0.0)
    limit = max(MIN_PCT_SPAN, 1.1 * largest)
    (ax.set_ylim if axis == "y" else ax.set_xlim)(-limit, limit)
    (ax.axhline if axis == "y" else ax.axvline)(0.0, color="black", lw=0.9, zorder=1)


def _same(layers: list[dict], baseline: list[dict]) -> bool:
    return all(a["top"] == b["top"] and a["median"] == b["median"] for a, b in zip(layers, baseline, strict=True))


def profiles_figure(variants: dict[str, list[dict]], title: str) -> tuple[Figure, Axes]:
    """Every variant's top-1 (solid) and median (dashed) against block, on one chart. The
    first (the baseline) is a wide pale line underneath, so a variant equal to it (marked
    "= baseline" in the legend) does not hide it."""
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.subplots()
    names = list(variants)
    base = variants[names[0]]
    colors = style.colors(len(names) - 1)  # the baseline is grey
    for i, (name, layers) in enumerate(variants.items()):
        x = [row["layer"] for row in layers]
        if i == 0:
            line = {"color": "0.6", "lw": 5, "alpha": 0.6, "zorder": 1}
            label = name
        else:
            line = {"color": colors[i - 1], "lw": 1.3, "marker": "o", "ms": 3, "zorder": 2}
            label = f"{name} (= {names[0]})" if _same(layers, base) else name
        ax.plot(x, style.values([row["top"][0] for row in layers]), label=label, **line)
        ax.plot(x, style.values([row["median"] for row in layers]), ls="--", **line)
    ax.set_yscale("log")
    ax.set_xticks([row["layer"] for row in base])
    ax.set_xlabel("layer (0-based)")
    ax.set_ylabel("|block output| (mean over windows)\nsolid: top 1, dashed: median")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    style.legend(ax, len(names))
    return fig, ax


def change_figure(changes: dict[str, list[float | None]], title: str) -> tuple[Figure, Axes]:
    """% change of top-1 vs the baseline, per block, one line per variant, on a symmetric
    axis of at least +-1 % around the zero line."""
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, (name, pct) in enumerate(changes.items()):
        same = all(p == 0.0 for p in pct)
        ax.plot(range(len(pct)), style.values(pct), label=f"{name} (no change)" if same else name, **style.overlap(i))
    _symmetric_pct_axis(ax, [p for pct in changes.values() for p in pct])
    n_layer = max((len(p) for p in changes.values()), default=0)
    ax.set_xticks(range(n_layer))
    ax.set_xlabel("layer (0-based)")
    ax.set_ylabel("top-1 change vs baseline (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    style.legend(ax, len(changes))
    return fig, ax


def _stat_label(key: str) -> str:
    return key.removesuffix("_pct").replace("top", "top-")


def change_heatmap(changes: dict[str, dict], title: str) -> tuple[Figure, Axes]:
    """% change vs the baseline of every statistic (top-1 .. top-k, median) at every block:
    one row per (variant, statistic), one column per block, a diverging color scale
    symmetric about 0 (at least +-1 %), the values written in the cells."""
    keys = [k for k, v in next(iter(changes.values())).items() if k.endswith("_pct") and isinstance(v, list)]
    rows = [(name, key) for name in changes for key in keys]
    grid = [style.values(changes[name][key]) for name, key in rows]
    n_layer = len(grid[0])
    flat = [v for row in grid for v in row if v == v]
    limit = max(MIN_PCT_SPAN, max((abs(v) for v in flat), default=0.0))
    fig = Figure(figsize=(2.5 + 0.55 * n_layer, 1.3 + 0.28 * len(rows)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(grid, cmap=style.DIVERGING, vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="change vs baseline (%)", shrink=0.8)
    if n_layer <= 32 and len(rows) <= 80:
        for r, row in enumerate(grid):
            for c, v in enumerate(row):
                if v == v:
                    text = f"{v:+.1f}" if abs(v) >= 0.05 else "0"
                    color = "white" if abs(v) > 0.6 * limit else "black"
                    ax.text(c, r, text, ha="center", va="center", fontsize=6.5, color=color)
    ax.set_xticks(range(n_layer))
    ax.set_yticks(range(len(rows)), [f"{name}: {_stat_label(key)}" for name, key in rows], fontsize="small")
    for boundary in range(len(keys), len(rows), len(keys)):  # a line between variants
        ax.axhline(boundary - 0.5, color="black", lw=1.2)
    ax.set_xlabel("layer (0-based)")
    ax.set_title(title)
    return fig, ax


def _probability_grid(rows: list[list[float | None]], title: str, xlabel: str, label: str, cmap: str):
    """A layers x columns grid of probabilities, its color scale from 0 to the largest value
    shown (a fixed 0..1 scale leaves a 0.1 sink column nearly black); the colorbar shows it."""
    n_layer, n_col = len(rows), len(rows[0])
    fig = Figure(figsize=(max(4.5, 1.5 + 0.45 * n_col), max(3.0, 1.2 + 0.4 * n_layer)), layout="constrained")
    ax = fig.subplots()
    values = [style.values(row) for row in rows]
    largest = max((v for row in values for v in row if v == v), default=0.0)
    image = ax.imshow(values, vmin=0.0, vmax=largest if largest > 0 else 1.0, cmap=cmap, aspect="auto")
    scale = f"scale 0 to {largest:.3g}" if largest > 0 else "every value is 0"
    fig.colorbar(image, ax=ax, label=f"{label}\n({scale})")
    ax.set_xticks(range(n_col))
    ax.set_yticks(range(n_layer))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("layer (0-based)")
    ax.set_title(title)
    return fig, ax


def head_heatmap(
    scores: list[list[float]], title: str, pruned: list[list[int]] = (), label: str = "mean attention on token 0"
) -> tuple[Figure, Axes]:
    """Layers x heads grid of a head score (first-token or massive-token attention); the
    `pruned` heads crossed out (their attention is still measured, but their output is zeroed)."""
    fig, ax = _probability_grid(scores, title, "head (0-based)", label, style.SEQUENTIAL)
    if pruned:
        ax.scatter([h for _, h in pruned], [layer for layer, _ in pruned], marker="x", s=90, c="red", lw=2.5,
                   label="pruned")  # fmt: skip
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.08 - 0.3 / len(scores)), fontsize="small", frameon=False)
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


def sweep_figure(ks: list[int], mean_pct: dict[str, list[float | None]], title: str) -> tuple[Figure, Axes]:
    """Mean (over blocks) change of every statistic (`top1_pct` ... `median_pct` -> values
    per k) against the number of pruned heads, on a symmetric % axis."""
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    for i, (key, values) in enumerate(mean_pct.items()):
        line = style.overlap(i) | ({"color": "gray", "ls": "--"} if key == "median_pct" else {})
        ax.plot(ks, style.values(values), label=_stat_label(key), **line)
    _symmetric_pct_axis(ax, [v for values in mean_pct.values() for v in values])
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("heads pruned (k)")
    ax.set_ylabel("mean change over layers vs baseline (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    style.legend(ax)
    return fig, ax


def _dim_ticks(n_dim: int, labelled: list[int]) -> list[int]:
    """The first and last dim, a few evenly spaced ones, and the labelled dims."""
    even = [round(i * (n_dim - 1) / 4) for i in range(5)]
    near = [d for d in even if all(abs(d - m) > n_dim / 25 for m in labelled)]
    return sorted(set(near) | set(labelled))


def feature_view_figure(
    values: list[list[float]], tokens: list[str], dims: list[int], title: str, note: str | None = None
) -> tuple[Figure, list[Axes]]:
    """|block output| of one text, two ways: the paper's 3D view (figure 1; orthographic, so
    heights compare) of one line per token along the feature dims, and a 2D side view that
    reads exactly. The detected massive `dims` are labelled on the dim axis and in the 2D
    view with their value and token; with none detected, the 3 largest dims are labelled and
    `note` says why nothing was flagged. Returns the figure and its (3D, 2D) axes."""
    n_dim = len(values[0])
    peaks = [max(range(len(values)), key=lambda t, d=d: values[t][d]) for d in range(n_dim)]  # token per dim
    largest = sorted(range(n_dim), key=lambda d: -values[peaks[d]][d])[:3]
    labelled = sorted(dims) if dims else sorted(largest)
    ticks = _dim_ticks(n_dim, labelled)
    fig = Figure(figsize=(12, 5.2), layout="constrained")
    grid = fig.add_gridspec(1, 2, width_ratios=(1.15, 1.0))
    ax3 = fig.add_subplot(grid[0], projection="3d", proj_type="ortho")
    ax2 = fig.add_subplot(grid[1])
    for t, row in enumerate(values):
        ax3.plot(range(n_dim), [t] * n_dim, row, lw=0.8, color=style.color(t))
        ax2.plot(range(n_dim), row, lw=0.8, color=style.color(t), label=repr(tokens[t]))
    ax3.set_xlim(0, n_dim - 1)
    ax3.set_xticks(ticks, [str(d) for d in ticks], fontsize="small")
    ax3.set_zlim(0, None)
    ax3.set_box_aspect((1.8, 1.8, 1.0), zoom=1.15)  # a deep token axis: about 16 pixels a token at 8 tokens
    ax3.set_xlabel("feature dim")
    ax3.set_title("3D view (token x dim x |value|)", fontsize="small")
    ax3.view_init(elev=22, azim=-58)
    kind = "massive dim" if dims else "largest dim"
    for k, d in enumerate(labelled):
        t = peaks[d]
        right = d > 0.6 * (n_dim - 1)  # the label goes left of a peak near the right edge
        ax2.annotate(
            f"{kind} {d}: {values[t][d]:.4g}\non {tokens[t]!r} (position {t})",
            (d, values[t][d]),
            xytext=(-8 if right else 8, 22 * k),  # staggered, so labels of nearby dims do not overlap
            textcoords="offset points",
            fontsize="small",
            va="bottom",
            ha="right" if right else "left",
        )
    ax2.set_xlim(0, n_dim - 1)
    ax2.set_xticks(ticks, [str(d) for d in ticks])
    ax2.set_ylim(0, 1.35 * max(max(row) for row in values))
    ax2.set_xlabel(f"feature dim (0..{n_dim - 1}; {'massive' if dims else 'largest'} dims labelled)")
    ax2.set_ylabel("|block output|")
    ax2.set_title("side view: every token's |value| per dim, to scale", fontsize="small")
    ax2.grid(True, alpha=0.3)
    if len(tokens) <= 16:
        ax2.legend(fontsize="x-small", title="token", title_fontsize="x-small", loc="upper left",
                   bbox_to_anchor=(1.01, 1.0))  # fmt: skip
    fig.suptitle(title if note is None else f"{title}\n{note}", fontsize="medium")
    _token_axis(fig, ax3, tokens)
    return fig, [ax3, ax2]


def _token_axis(fig: Figure, ax3: Axes, tokens: list[str]) -> None:
    """The 3D view's token axis: a tick per token, a label every k-th, k the smallest step
    at which neighbouring labels clear each other on screen. The axis runs at a slant, so
    the labels of a long text would stack into one another; the side view's legend (up to
    16 tokens) and the labelled peaks name the tokens in between."""
    labels = [_token_label(token) for token in tokens]
    ax3.set_yticks(range(len(tokens)), labels, fontsize="small")
    fig.draw_without_rendering()  # lays the figure out: where the axis lands and how big a label is
    xs, ys, _ = proj3d.proj_transform(np.zeros(2), np.array([0.0, 1.0]), np.zeros(2), ax3.get_proj())
    (x0, y0), (x1, y1) = ax3.transData.transform(np.column_stack([xs, ys]))  # one token's step, in pixels
    boxes = [text.get_window_extent() for text in ax3.get_yticklabels()]
    # centred labels a step (dx, dy) apart clear each other when dy passes their height or dx their width
    step = min(
        math.ceil(max(b.height for b in boxes) / max(abs(y1 - y0), 1e-9)),
        math.ceil(max(b.width for b in boxes) / max(abs(x1 - x0), 1e-9)),
    )
    if step > 1:
        ax3.set_yticks(range(len(tokens)), [label if t % step == 0 else "" for t, label in enumerate(labels)],
                       fontsize="small")  # fmt: skip


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
    ax.set_xlabel("layer (0-based)")
    ax.set_ylabel("value (mean over windows)")
    ax.set_title(title)
    style.legend(ax)
    return fig, ax


def share_per_layer_figure(values: list[float | None], title: str, ylabel: str, color: str) -> tuple[Figure, Axes]:
    """A share (0 to 1) per layer, as a line; null values are gaps."""
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(range(len(values)), style.values(values), marker="o", color=color)
    ax.set_ylim(0.0, 1.05)
    ax.set_xticks(range(len(values)))
    ax.set_xlabel("layer (0-based)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    return fig, ax


def attention_to_massive_figure(values: list[float | None], title: str) -> tuple[Figure, Axes]:
    """Per layer, the share of all attention mass on the window's massive tokens (the
    paper's attention-concentration view); 0 where a layer's windows have none."""
    return share_per_layer_figure(values, title, "attention on massive tokens", "tab:purple")


def received_figure(received: list[list[float | None]], title: str) -> tuple[Figure, Axes]:
    """Layers x leading key positions: the mean attention each position receives (over heads,
    queries and windows); a bright column away from 0 is a position-specific sink."""
    return _probability_grid(received, title, "key position (0-based)", "mean attention received", style.PEAKS)


def key_sink_rate_figure(rates: list[list[float | None]], epsilon: float, title: str) -> tuple[Figure, Axes]:
    """Layers x leading key positions: the share of (window, head) pairs whose alpha_k (Gu et
    al.'s mean attention on key k over the queries that may attend to it) exceeds `epsilon`;
    column 0 is the sink rate, a bright column further right a secondary sink."""
    label = f"key sink rate (share of (window, head)\nwith alpha_k > {epsilon:g})"
    return _probability_grid(rates, title, "key position k (0-based)", label, style.PEAKS)


def secondary_sinks_figure(rows: list[dict], n_layer: int, title: str, tokens: int = 12) -> tuple[Figure, Axes]:
    """Layers x the `tokens` tokens most sunk on at keys other than the first (over all
    layers): how many (window, head) pairs sink on each; a token that is also massive in the
    stream entering the block (in most of those pairs) is marked with a star."""
    totals: dict[str, int] = {}
    for row in rows:
        totals[row["token"]] = totals.get(row["token"], 0) + row["pairs"]
    shown = sorted(totals, key=lambda t: -totals[t])[:tokens]
    grid = [[math.nan] * len(shown) for _ in range(n_layer)]
    massive = set()
    for row in rows:
        if row["token"] in shown:
            grid[row["layer"]][shown.index(row["token"])] = row["pairs"]
            if row["entering_massive"] > 0.5:
                massive.add((row["layer"], shown.index(row["token"])))
    label = "(window, head) pairs sinking on it\n(blank: none)"
    star = "\n(star: massive in the stream entering the block)" if massive else ""
    xlabel = "token at a key after the first" + star
    fig, ax = _probability_grid(grid, title, xlabel, label, style.PEAKS)
    ax.set_xticks(range(len(shown)), [_token_label(t) for t in shown], rotation=45, ha="right")
    if massive:
        ax.scatter([c for _, c in massive], [layer for layer, _ in massive], marker="*", s=60, c="tab:cyan")
    return fig, ax


def linear_inputs_figure(rows: list[dict], kinds: tuple[str, ...], title: str) -> tuple[Figure, Axes]:
    """Per layer, for every linear input: top-1 / median |x| (left, log) and the relative
    error of 8-bit round-to-nearest with one scale per tensor (solid) and per token (dashed;
    right, log): a spike of 1000x the median makes the per-tensor error jump, per token not."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ratio_ax, error_ax = fig.subplots(1, 2)
    layers = [row["layer"] for row in rows]
    for kind, color in zip(kinds, style.colors(len(kinds)), strict=True):
        if all(row[kind] is None for row in rows):
            continue
        series = {
            key: style.values([None if row[kind] is None else row[kind][key] for row in rows])
            for key in ("top1_over_median", "int8_error_per_tensor", "int8_error_per_token")
        }
        ratio_ax.plot(layers, series["top1_over_median"], marker="o", color=color, label=kind)
        error_ax.plot(layers, series["int8_error_per_tensor"], marker="o", color=color, label=f"{kind}, per tensor")
        error_ax.plot(layers, series["int8_error_per_token"], marker="x", ls="--", color=color,
                      label=f"{kind}, per token")  # fmt: skip
    ratio_ax.set_ylabel("top-1 / median |x|")
    error_ax.set_ylabel("8-bit error ||x - Q(x)||^2 / ||x||^2")
    for ax in (ratio_ax, error_ax):
        ax.set_yscale("log")
        ax.set_xlabel("layer (0-based)")
        ax.set_xticks(layers)
        ax.grid(alpha=0.3)
    style.legend(ratio_ax)
    error_ax.legend(fontsize="x-small", ncols=2)
    fig.suptitle(title)
    return fig, (ratio_ax, error_ax)


def _token_label(token: str) -> str:
    """A token as a tick label: newlines and tabs escaped, `$` literal (no mathtext)."""
    return repr(token)[1:-1].replace("$", r"\$")


def _head_title(head: int | tuple[int, int]) -> str:
    return f"head {head}" if isinstance(head, int) else f"layer {head[0]}, head {head[1]}"


def attention_view_figure(
    logits: list,
    probs: list,
    heads: list[int] | list[tuple[int, int]],
    first_token: list[float],
    tokens: list[str],
    title: str,
) -> tuple[Figure, list[list[Axes]]]:
    """A few heads' attention over one text (the paper's figures 6 and 7): a row of logits
    s_ij (before the mask; NaN where masked) and a row of probabilities p_ij, (T, T) each,
    one column per head (a head of the layer the title names, or a (layer, head) pair;
    `first_token`: its first-token score), key token on x, query token
    on y. Masked (future) keys are grey in both rows, as their logit is never used. Each row
    shares one color scale (logits: their range; probabilities: 0 to the largest shown), so
    heads compare; panels grow with the token count so every token's label stays readable."""
    s = [np.asarray(x, dtype=float) for x in logits]
    p = [np.where(np.isnan(a), np.nan, np.asarray(b, dtype=float)) for a, b in zip(s, probs, strict=True)]
    n, t = len(heads), len(tokens)
    side = max(2.2, 0.15 * t + 0.4)  # inches per panel: about 11 points per token at 40 tokens
    fig = Figure(figsize=(2.0 + n * side + 1.3, 1.4 + 2 * side + 1.0), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False, sharex=True, sharey=True)
    labels, fontsize = [_token_label(tok) for tok in tokens], 8 if t <= 24 else 7
    lo, hi = float(np.nanmin(s)), float(np.nanmax(s))
    largest = float(np.nanmax(p))
    rows = [
        (s, colormaps[style.SEQUENTIAL], lo, hi, "logit $s_{ij}$ (grey: masked)", "logits"),
        (p, colormaps[style.PEAKS], 0.0, largest if largest > 0 else 1.0,
         f"probability $p_{{ij}}$ (0 to {largest:.3g})", "probabilities"),
    ]  # fmt: skip
    for r, (maps, cmap, vmin, vmax, label, name) in enumerate(rows):
        for c, (head, score) in enumerate(zip(heads, first_token, strict=True)):
            ax = axes[r][c]
            image = ax.imshow(maps[c], cmap=cmap.with_extremes(bad=style.MASKED), vmin=vmin, vmax=vmax,
                              interpolation="nearest")  # fmt: skip
            if r == 0:
                ax.set_title(f"{_head_title(head)}\nfirst-token score {score:.3f}", fontsize="small")
        fig.colorbar(image, ax=list(axes[r]), label=label, shrink=0.9)
        axes[r][0].set_ylabel(f"{name}\nquery token")
    axes[0][0].set_xticks(range(t), labels)  # shared: the outer axes show them
    axes[0][0].set_yticks(range(t), labels)
    for ax in axes.flat:
        ax.tick_params(axis="x", labelrotation=90, labelsize=fontsize)
        ax.tick_params(axis="y", labelsize=fontsize)
    for ax in axes[1]:
        ax.set_xlabel("key token")
    fig.suptitle(f"{title}\nrows: logits before the mask, probabilities; grey: masked (future) keys", fontsize="medium")
    return fig, [list(row) for row in axes]
