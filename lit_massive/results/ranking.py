"""Head rankings in plain Python (no torch): the order `rank-heads`, selections, sweeps and
the head tables share, and the markdown ranking tables.

Highest score first for `top`, lowest first for `bottom`; ties keep (layer, head) order and
unmeasured heads (NaN, null in results.json) come last in both orders: the order
`torch.argsort(-x, stable=True)` / `torch.argsort(x, stable=True)` gives a flattened (L, H)
tensor, without importing torch, so `rank-heads` starts at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from lit_massive.results.markdown import markdown_table

ORDERS = ("top", "bottom")
TOP_HEADS, BOTTOM_HEADS = 10, 5  # heads shown at each end of a ranking
RANKING_HEAD = ["rank", "layer", "head", "score"]

Rows = Sequence[Sequence[float | None]]


def _value(v: float | None) -> float:
    return math.nan if v is None else float(v)


def rank_heads(scores: Rows, order: str) -> list[tuple[int, int]]:
    """All heads (layer, head) of (L, H) `scores` rows by score, highest first for `top`,
    lowest first for `bottom`; ties keep (layer, head) order; NaN or null scores last."""
    flat = [(layer, head, _value(v)) for layer, row in enumerate(scores) for head, v in enumerate(row)]
    sign = -1.0 if order == "top" else 1.0

    def key(item: tuple[int, int, float]) -> tuple[bool, float]:
        nan = math.isnan(item[2])
        return nan, 0.0 if nan else sign * item[2]

    return [(layer, head) for layer, head, _ in sorted(flat, key=key)]  # sorted is stable


def ranked_heads(scores: Rows) -> list[tuple[int, int, float]]:
    """(layer, head, score), highest score first; ties in (layer, head) order; null as NaN, last."""
    return [(layer, head, _value(scores[layer][head])) for layer, head in rank_heads(scores, "top")]


def ranking_rows(ranked: list[tuple[int, int, float]]) -> list[list[str]]:
    """Table rows (rank, layer, head, score) of a ranking."""
    return [[str(i + 1), str(layer), str(head), f"{s:.4f}"] for i, (layer, head, s) in enumerate(ranked)]


def heads_table(ranked: list[tuple[int, int, float]], by: str = "first-token attention") -> str:
    """The top and bottom heads of a ranking (`ranked_heads`) by the score `by` names."""
    rows = ranking_rows(ranked)
    return (
        f"**Top {TOP_HEADS} heads by {by}**\n\n"
        + markdown_table(RANKING_HEAD, rows[:TOP_HEADS])
        + f"\n\n**Bottom {BOTTOM_HEADS}**\n\n"
        + markdown_table(RANKING_HEAD, rows[-BOTTOM_HEADS:])
    )


def ranking_markdown(scores: Rows, everything: bool = False) -> str:
    """The top 10 and bottom 5 heads, highest first, with a gap row; every head with `everything`."""
    rows = ranking_rows(ranked_heads(scores))
    if everything or len(rows) <= TOP_HEADS + BOTTOM_HEADS:
        return markdown_table(RANKING_HEAD, rows)
    shown = rows[:TOP_HEADS] + [["...", "", "", ""]] + rows[-BOTTOM_HEADS:]
    return markdown_table(RANKING_HEAD, shown) + f"\n\n{len(rows)} heads; --all lists every one"
