"""Dormant heads (arXiv 2504.03889): heads whose output is near zero, ranked by the norm of
what they write rather than by where they attend. Per (layer, head), the mean over queries
of ||o_i||, o_i = sum_j p_ij v_j, the head's output before the output projection."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lit_massive.analyses.base import Forward
from lit_massive.analyses.head_means import HeadFiguresAnalysis
from lit_massive.analyses.registry import register_analysis
from lit_massive.figures import head_figures
from lit_massive.results.markdown import markdown_table
from lit_massive.results.ranking import RANKING_HEAD, TOP_HEADS, rank_heads


def dormant_table(norms: list[list[float | None]]) -> str:
    """The heads with the smallest output norm, smallest first (`select: bottom, by:
    head_output_norm` prunes them in this order)."""
    ranked = rank_heads(norms, "bottom")[:TOP_HEADS]
    rows = [[str(i + 1), str(layer), str(head), f"{norms[layer][head]:.4g}"] for i, (layer, head) in enumerate(ranked)]
    return f"**The {len(rows)} most dormant heads (smallest mean ||head output||)**\n\n" + markdown_table(
        RANKING_HEAD, rows
    )


@register_analysis
class HeadOutputNorm(HeadFiguresAnalysis):
    """`head_output_norm[l][h]`: mean over queries of ||o_i||, then over windows."""

    name = "head_output_norm"
    keys = ("head_output_norm",)
    head_figures = {key: key for key in keys}

    def values(self, forward: Forward) -> dict[str, list[Tensor]]:
        return {"head_output_norm": [r.output_norm for r in forward.probed.heads]}

    @classmethod
    def publish(cls, out, model: str, name: str, entry: dict[str, Any]) -> None:
        norms = entry["head_output_norm"]
        label, pruned = "mean ||head output||", entry["pruned_heads"]
        fig, _ = head_figures.head_grid(norms, f"{model}: {name}", label, pruned=pruned, log=True)
        out.figure(f"{name}/figures/head_output_norm", fig)
        out.text(f"{name}/tables/dormant_heads", dormant_table(norms))
