"""Pre-softmax logits on the first token: how far a query's logit on key 0 stands above its
mean logit on the other keys it may attend to (the paper's logit plots; a sink head has a
large gap). Logits are taken after scaling and softcapping, before the mask."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lit_massive.analyses.base import Forward
from lit_massive.analyses.head_means import HeadFiguresAnalysis
from lit_massive.analyses.registry import register_analysis
from lit_massive.figures import head_figures
from lit_massive.results.ranking import heads_table, ranked_heads


@register_analysis
class FirstTokenLogitGap(HeadFiguresAnalysis):
    """`first_token_logit_gap[l][h]`: mean over the queries i >= 1 that may attend to key 0 of
    s_i0 - mean of s_ij over the other keys j query i may attend to, then over windows."""

    name = "first_token_logit_gap"
    keys = ("first_token_logit_gap",)
    head_figures = {key: key for key in keys}

    def values(self, forward: Forward) -> dict[str, list[Tensor]]:
        return {"first_token_logit_gap": [r.logit_gap for r in forward.probed.heads]}

    @classmethod
    def publish(cls, out, model: str, name: str, entry: dict[str, Any]) -> None:
        gaps = entry["first_token_logit_gap"]
        label = "first-token logit gap\n(s_i0 - mean of the other s_ij)"
        fig, _ = head_figures.head_grid(gaps, f"{model}: {name}", label, diverging=True, pruned=entry["pruned_heads"])
        out.figure(f"{name}/figures/first_token_logit_gap", fig)
        out.text(f"{name}/tables/heads_logit_gap", heads_table(ranked_heads(gaps), "first-token logit gap"))
