"""Head scores: how much attention each head puts on the first token and on the window's
massive tokens, and what each leading key position receives per layer (attention sinks)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lit_massive.analyses.base import Analysis, Forward, Setup, SumStatesMetric
from lit_massive.analyses.layer_profile import finite
from lit_massive.analyses.registry import register_analysis
from lit_massive.figures import figures
from lit_massive.options import PositiveInt
from lit_massive.probes import Needs
from lit_massive.results.ranking import BOTTOM_HEADS, TOP_HEADS, heads_table, ranked_heads


class HeadScores(SumStatesMetric):
    """Per (layer, head): the attention probability on token 0 (first-token score) and on
    the window's massive tokens (massive-token score), each averaged over query positions,
    then over windows; per layer, the attention each of the first `positions` key
    positions receives, averaged over heads, queries and sequences. A sequence whose scores
    are not finite (half-precision overflow upstream) is left out of that layer's means
    and counted."""

    score_sum: Tensor  # (L, H) float64, first-token scores
    massive_sum: Tensor  # (L, H) float64, massive-token scores
    count: Tensor  # (L, H) int64, sequences with a finite score
    nonfinite: Tensor  # (L, H) int64
    received_sum: Tensor  # (L, P) float64
    received_count: Tensor  # (L, P) int64, sequences long enough to have that position, finite

    def __init__(self, n_layer: int, n_head: int, positions: int = 16, **kwargs) -> None:
        super().__init__(**kwargs)
        self.positions = positions
        f64, i64 = torch.float64, torch.int64
        for name, dtype in (("score_sum", f64), ("massive_sum", f64), ("count", i64), ("nonfinite", i64)):
            self.add_state(name, torch.zeros(n_layer, n_head, dtype=dtype), dist_reduce_fx="sum")
        self.add_state("received_sum", torch.zeros(n_layer, positions, dtype=f64), dist_reduce_fx="sum")
        self.add_state("received_count", torch.zeros(n_layer, positions, dtype=i64), dist_reduce_fx="sum")

    def update(self, received: list[Tensor], massive: Tensor | None = None) -> None:
        """`received[i]` (B, H, T): what each key position receives in layer i (mean over
        queries); `massive` (B, T) bool: each window's massive tokens (None: none)."""
        for i, r in enumerate(received):
            ok = torch.isfinite(r).all(dim=-1)  # (B, H)
            on_massive = r.mul(massive[:, None, :]).sum(-1) if massive is not None else torch.zeros_like(r[..., 0])
            self.score_sum[i] += torch.where(ok, r[..., 0], 0.0).sum(0, dtype=torch.float64)
            self.massive_sum[i] += torch.where(ok, on_massive, 0.0).sum(0, dtype=torch.float64)
            self.count[i] += ok.sum(0)
            self.nonfinite[i] += (~ok).sum(0)
            p = min(self.positions, r.shape[-1])
            window_ok = ok.all(dim=-1)  # (B,)
            head_mean = torch.where(window_ok[:, None], r[..., :p].mean(dim=1), 0.0)  # (B, p)
            self.received_sum[i, :p] += head_mean.sum(0, dtype=torch.float64)
            self.received_count[i, :p] += window_ok.sum()

    def compute(self) -> dict[str, Tensor]:
        """(L, H) first-token and massive-token means (NaN for a head with no finite score),
        (L, P) received attention (NaN past the window length) and (L,) attention to
        massive tokens: the share of all attention mass on them, mean over heads."""
        massive = self.massive_sum / self.count
        return {
            "first_token": self.score_sum / self.count,
            "massive_tokens": massive,
            "received": self.received_sum / self.received_count,
            "attention_to_massive": massive.mean(dim=1),
        }


def matrix(values: Tensor) -> list[list[float | None]]:
    """A 2-D tensor as JSON rows, NaN as null."""
    return [[finite(v) for v in row] for row in values.tolist()]


@dataclass
class HeadScoresOptions:
    """Each head's mean attention on the first token and on the window's massive tokens, and
    what the leading key positions receive (with the sink rates and internals, same pass).

    Args:
        enabled: measure them.
        received_positions: how many leading key positions ``received`` and ``key_sink_rate``
            report per layer (position-specific attention sinks show up there).
    """

    enabled: bool = False
    received_positions: PositiveInt = 16


@register_analysis
class HeadScoresAnalysis(Analysis):
    """Experiment 3 of the original study (first-token attention of every head), the
    attention on each window's massive tokens, and the attention each leading position receives."""

    name = "head_scores"
    Options = HeadScoresOptions
    moved = {"head_scores": "enabled", "received_positions": "received_positions"}
    needs = Needs(attention=True)
    keys = ("head_scores", "massive_token_scores", "attention_to_massive", "received")
    head_figures = {"first_token": "head_scores", "massive_tokens": "massive_token_scores"}

    def new_metric(self, setup: Setup) -> HeadScores:
        return HeadScores(setup.layout.n_layer, setup.layout.n_head, setup.of("head_scores").received_positions)

    def update(self, variant: str, forward: Forward) -> None:
        # the massive tokens of this very pass: no second forward
        self.metrics[variant].update(forward.probed.received, forward.massive_tokens)

    def section(self, computed: dict[str, Tensor], decode: Callable[[int], str]) -> dict[str, Any]:
        return {
            "head_scores": matrix(computed["first_token"]),
            "massive_token_scores": matrix(computed["massive_tokens"]),
            # per layer: the share of all attention mass on the window's massive tokens (mean over heads)
            "attention_to_massive": [finite(v) for v in computed["attention_to_massive"].tolist()],
            # per layer: the attention each leading key position receives (mean over heads and queries)
            "received": matrix(computed["received"]),
        }

    @classmethod
    def publish(cls, out, model: str, name: str, entry: dict[str, Any]) -> None:
        title, pruned = f"{model}: {name}", entry["pruned_heads"]
        ranked = ranked_heads(entry["head_scores"])
        out.figure(f"{name}/figures/head_scores", figures.head_heatmap(entry["head_scores"], title, pruned)[0])
        shown = ranked[:TOP_HEADS] + ranked[-BOTTOM_HEADS:]
        out.figure(f"{name}/figures/head_ranking", figures.head_ranking_figure(shown, TOP_HEADS, title)[0])
        out.text(f"{name}/tables/heads", heads_table(ranked))
        # attention on the window's massive tokens (position 0 and any later ones)
        massive = entry["massive_token_scores"]
        label = "mean attention on massive tokens"
        out.figure(f"{name}/figures/massive_token_scores", figures.head_heatmap(massive, title, pruned, label)[0])
        out.text(f"{name}/tables/heads_massive_tokens", heads_table(ranked_heads(massive), "massive-token attention"))
        share = entry["attention_to_massive"]
        out.figure(f"{name}/figures/attention_to_massive", figures.attention_to_massive_figure(share, title)[0])
        for layer, value in enumerate(share):
            out.scalar(f"{name}/attention_to_massive", value, layer)
        out.figure(f"{name}/figures/received", figures.received_figure(entry["received"], title)[0])
