"""The first-token logit taken apart: s_i0 = scaling * ||q_i|| * ||k_0|| * cos(q_i, k_0)
(before any softcap). Whether a head sinks because the first key is long or because queries
point at it is what the sink literature plots (Gu et al., arXiv 2410.13835 and 2410.10781
section 3); the same factors over the other keys say what the first key stands out from."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lit_massive.analyses.base import Forward
from lit_massive.analyses.head_means import HeadFiguresAnalysis
from lit_massive.analyses.registry import register_analysis
from lit_massive.figures import head_figures


@register_analysis
class LogitFactors(HeadFiguresAnalysis):
    """Per (layer, head), means over the queries i >= 1 that may attend to key 0, then over
    windows: `query_norm` = ||q_i||, `query_key_cos_first` = cos(q_i, k_0),
    `query_key_cos_rest` = the mean cos(q_i, k_j) over the keys j >= 1 query i may attend to;
    and `key_norm_first` = ||k_0||, `key_norm_rest` = mean over j >= 1 of ||k_j|| (a KV
    head's keys reported for each query head that reads them), q and k as the attention
    function receives them (after RoPE and q/k norms)."""

    name = "logit_factors"
    keys = ("query_norm", "key_norm_first", "key_norm_rest", "query_key_cos_first", "query_key_cos_rest")
    head_figures = {key: key for key in keys}
    fields = {
        "query_norm": "query_norm",
        "key_norm_first": "key_norm_first",
        "key_norm_rest": "key_norm_rest",
        "query_key_cos_first": "cos_first",
        "query_key_cos_rest": "cos_rest",
    }  # results.json key -> `HeadRecord` field

    def values(self, forward: Forward) -> dict[str, list[Tensor]]:
        heads = forward.probed.heads
        return {key: [getattr(r, field) for r in heads] for key, field in self.fields.items()}

    @classmethod
    def publish(cls, out, model: str, name: str, entry: dict[str, Any]) -> None:
        title, pruned = f"{model}: {name}", entry["pruned_heads"]
        for key, label, diverging in (
            ("key_norm_first", "||k_0||, the first key's norm", False),
            ("query_key_cos_first", "mean cos(q_i, k_0)", True),
        ):
            grid = entry[key]
            fig, _ = head_figures.head_grid(grid, title, label, diverging=diverging, pruned=pruned, log=not diverging)
            out.figure(f"{name}/figures/{key}", fig)
        for key in cls.keys:
            for layer, row in enumerate(entry[key]):
                out.scalar(f"{name}/{key}", head_figures.head_mean(row), layer)
