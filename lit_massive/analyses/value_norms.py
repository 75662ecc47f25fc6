"""The value-state drain (arXiv 2410.13835): a sink token's value vector is small next to
the others', so the attention it absorbs adds little. Per (layer, head), ||v_0|| and the
mean ||v_j|| over the other keys, as the attention function receives them (under GQA, a KV
head's values are reported for each query head that reads them)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lit_massive.analyses.base import Forward
from lit_massive.analyses.head_means import HeadFiguresAnalysis
from lit_massive.analyses.registry import register_analysis
from lit_massive.figures import head_figures


@register_analysis
class ValueNorms(HeadFiguresAnalysis):
    """`value_norm_first[l][h]` = ||v_0||, `value_norm_rest[l][h]` = mean over j >= 1 of ||v_j||."""

    name = "value_norms"
    keys = ("value_norm_first", "value_norm_rest")
    head_figures = {key: key for key in keys}

    def values(self, forward: Forward) -> dict[str, list[Tensor]]:
        heads = forward.probed.heads
        return {
            "value_norm_first": [r.value_norm_first for r in heads],
            "value_norm_rest": [r.value_norm_rest for r in heads],
        }

    @classmethod
    def publish(cls, out, model: str, name: str, entry: dict[str, Any]) -> None:
        first, rest = entry["value_norm_first"], entry["value_norm_rest"]
        out.figure(f"{name}/figures/value_norms", head_figures.value_drain_figure(first, rest, f"{model}: {name}")[0])
        for layer, (f, r) in enumerate(zip(first, rest, strict=True)):
            out.scalar(f"{name}/value_norm_first", head_figures.head_mean(f), layer)
            out.scalar(f"{name}/value_norm_rest", head_figures.head_mean(r), layer)
