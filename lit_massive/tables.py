"""Markdown tables of a run's results (TensorBoard's text tab renders them); shared by the
report callback and `rank-heads`. Plain functions of results.json entries."""

from __future__ import annotations

import torch

from lit_massive.variants import BASELINE, rank_heads

TOP_HEADS, BOTTOM_HEADS = 10, 5  # heads shown at each end of a ranking
LOCATOR_ROWS = 50  # largest located massive activations shown; all are in results.json


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    """A markdown table with the header `head`."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def _num(value: float | None, fmt: str = ".4g") -> str:
    return "n/a" if value is None else format(value, fmt)


def _block(layer: int | None) -> str:
    return "-" if layer is None else str(layer)


def profile_table(layers: list[dict]) -> str:
    """The layer profile as a markdown table (TensorBoard's text tab renders it)."""
    k = len(layers[0]["top"])
    head = [
        "block",
        *(f"top-{j + 1}" for j in range(k)),
        "median",
        "top-1 / median",
        "massive (share)",
        "top-1 dim (share)",
        "position (share)",
        "token (share)",
    ]
    rows = [
        [
            str(r["layer"]),
            *(_num(t) for t in r["top"]),
            _num(r["median"]),
            _num(r["top1_over_median"], ".1f"),
            _num(r["massive_fraction"], ".2f"),
            f"{r['top1_dim']} ({r['top1_dim_fraction']:.2f})",
            f"{r['top1_position']} ({r['top1_position_fraction']:.2f})",
            f"`{r['top1_token']!r}` ({r['top1_token_fraction']:.2f})",
        ]
        for r in layers
    ]
    return markdown_table(head, rows)


def ranked_heads(scores: list[list[float]]) -> list[tuple[int, int, float]]:
    """(layer, head, score), highest score first; ties in (layer, head) order."""
    table = torch.tensor([[float("nan") if v is None else v for v in row] for row in scores])
    return [(layer, head, float(table[layer, head])) for layer, head in rank_heads(table, "top")]


def heads_table(ranked: list[tuple[int, int, float]], by: str = "first-token attention") -> str:
    """The top and bottom heads of a ranking (`ranked_heads`) by the score `by` names."""
    top = [[str(i + 1), str(layer), str(head), f"{s:.4f}"] for i, (layer, head, s) in enumerate(ranked[:TOP_HEADS])]
    n = len(ranked)
    bottom = [
        [str(n - BOTTOM_HEADS + i + 1), str(layer), str(head), f"{s:.4f}"]
        for i, (layer, head, s) in enumerate(ranked[-BOTTOM_HEADS:])
    ]
    return (
        f"**Top {TOP_HEADS} heads by {by}**\n\n"
        + markdown_table(["rank", "layer", "head", "score"], top)
        + f"\n\n**Bottom {BOTTOM_HEADS}**\n\n"
        + markdown_table(["rank", "layer", "head", "score"], bottom)
    )


def change_table(variants: dict[str, dict]) -> str:
    """Top-1 and median % change per block, one column pair per variant, mean row last."""
    names = [n for n, v in variants.items() if "change_vs_baseline" in v]
    n_layer = len(variants[BASELINE]["layers"])
    head = ["block", *(f"{n} {s} %" for n in names for s in ("top-1", "median"))]
    rows = [
        [
            str(i),
            *(
                _num(variants[n]["change_vs_baseline"][key][i], "+.2f")
                for n in names
                for key in ("top1_pct", "median_pct")
            ),
        ]
        for i in range(n_layer)
    ]
    rows.append(
        [
            "mean",
            *(
                _num(variants[n]["change_vs_baseline"]["mean_over_layers"][key], "+.2f")
                for n in names
                for key in ("top1_pct", "median_pct")
            ),
        ]
    )
    return markdown_table(head, rows)


def locator_table(massive: list[dict]) -> str:
    """The largest located massive activations (all of them are in results.json), in block
    order, largest |value| first within a block."""
    largest = sorted(massive, key=lambda e: -abs(e["value"]))[:LOCATOR_ROWS]
    shown = sorted(largest, key=lambda e: (e["layer"], -abs(e["value"]), e["dim"], e["position"]))
    rows = [
        [
            str(e["layer"]),
            str(e["dim"]),
            str(e["position"]),
            f"`{e['token']!r}`",
            f"{e['value']:.4g}",
            f"{e['fraction']:.2f}",
        ]
        for e in shown
    ]
    note = f"\n\n{len(massive) - len(shown)} more in results.json" if len(massive) > len(shown) else ""
    return markdown_table(["block", "dim", "position", "token", "mean value", "share of windows"], rows) + note


def summary_table(variants: dict[str, dict]) -> str:
    """One row per variant: what it prunes, perplexity, and the mean change vs baseline."""
    head = [
        "variant",
        "pruned heads",
        "perplexity",
        "perplexity change %",
        "mean top-1 change %",
        "first massive block",
        "first inf/NaN block",
    ]
    rows = []
    for name, v in variants.items():
        change = v.get("change_vs_baseline", {})
        rows.append(
            [
                name,
                " ".join(f"({layer},{head})" for layer, head in v["pruned_heads"]) or "-",
                _num(v["perplexity"], ".4f"),
                _num(change.get("perplexity_pct"), "+.3f"),
                _num(change.get("mean_over_layers", {}).get("top1_pct"), "+.3f"),
                _block(v["first_massive_layer"]),
                _block(v["first_nonfinite_layer"]),
            ]
        )
    return markdown_table(head, rows)


def largest_change(change: dict) -> tuple[str, int, float] | None:
    """(statistic, block, % change) with the largest |change| over every statistic and block."""
    found = [
        (key.removesuffix("_pct"), i, pct)
        for key, values in change.items()
        if key.endswith("_pct") and isinstance(values, list)
        for i, pct in enumerate(values)
        if pct is not None
    ]
    return max(found, key=lambda f: abs(f[2]), default=None)


def peak_ratio(layers: list[dict]) -> tuple[float, int] | None:
    """The largest top-1 / median over blocks, and its block."""
    found = [(r["top1_over_median"], r["layer"]) for r in layers if r["top1_over_median"] is not None]
    return max(found, default=None)


def terminal_summary(variants: dict[str, dict]) -> str:
    """The end-of-run table for the terminal, one row per variant: first massive block, the
    peak top-1 / median ratio, perplexity, and the change against the baseline (mean top-1
    change over blocks, perplexity change, the largest change of any statistic)."""
    head = ["variant", "first massive", "peak top-1/median (block)", "perplexity", "top-1 %", "perplexity %",
            "largest % (stat, block)"]  # fmt: skip
    rows = []
    for name, v in variants.items():
        change = v.get("change_vs_baseline")
        peak, largest = peak_ratio(v["layers"]), largest_change(change) if change else None
        rows.append(
            [
                name,
                _block(v["first_massive_layer"]),
                "-" if peak is None else f"{peak[0]:.1f} ({peak[1]})",
                _num(v["perplexity"], ".4f"),
                "-" if change is None else _num(change["mean_over_layers"]["top1_pct"], "+.2f"),
                "-" if change is None else _num(change["perplexity_pct"], "+.2f"),
                "-" if largest is None else f"{largest[2]:+.2f} ({largest[0]}, {largest[1]})",
            ]
        )
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]
    note = "%: change vs baseline (top-1: mean over blocks; largest: of any statistic at any block)"
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:], note])
