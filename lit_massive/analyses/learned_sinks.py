"""Learned attention sinks (gpt-oss): a logit per head that joins every row's softmax
denominator and attends to nothing, so a head can put attention nowhere instead of on the
first token. `learned_sink_mass[l][h]` is the mean share of a query's attention the learned
sink takes; null for a model without learned sinks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lit_massive.analyses.base import Analysis, Forward, Setup
from lit_massive.analyses.head_means import HeadMeans
from lit_massive.analyses.head_scores import matrix
from lit_massive.analyses.registry import register_analysis
from lit_massive.figures import head_figures
from lit_massive.probes import Needs
from lit_massive.results.ranking import heads_table, ranked_heads

KEY = "learned_sink_mass"


@register_analysis
class LearnedSinks(Analysis):
    """`learned_sink_mass[l][h]`: over queries, then windows, the mean of exp(sink_h - lse_i),
    the sink's share of query i's softmax, which is 1 - sum_j p_ij: one minus the attention
    all keys receive (`received` sums to that over the keys, as a mean over queries)."""

    name = "learned_sinks"
    requires = ("head_scores",)
    needs = Needs(attention=True)
    keys = (KEY,)

    def new_metric(self, setup: Setup) -> HeadMeans | None:
        has_sinks = any(isinstance(getattr(attn, "sinks", None), Tensor) for attn in setup.layout.attn)
        return HeadMeans((KEY,), setup.layout.n_layer, setup.layout.n_head) if has_sinks else None

    def update(self, variant: str, forward: Forward) -> None:
        if variant in self.metrics:
            mass = [1.0 - r.sum(dim=-1, dtype=torch.float64) for r in forward.probed.received]  # (B, H) each
            self.metrics[variant].update({KEY: mass})

    def section(self, computed: dict[str, Tensor], decode: Callable[[int], str]) -> dict[str, Any]:
        return {KEY: matrix(computed[KEY])}

    @classmethod
    def publish(cls, out, model: str, name: str, entry: dict[str, Any]) -> None:
        if entry[KEY] is None:
            return
        fig, _ = head_figures.head_grid(entry[KEY], f"{model}: {name}", "mean attention on the learned sink",
                                        pruned=entry["pruned_heads"])  # fmt: skip
        out.figure(f"{name}/figures/{KEY}", fig)
        out.text(f"{name}/tables/heads_learned_sink", heads_table(ranked_heads(entry[KEY]), "learned-sink attention"))
        for layer, row in enumerate(entry[KEY]):
            out.scalar(f"{name}/{KEY}", head_figures.head_mean(row), layer)
