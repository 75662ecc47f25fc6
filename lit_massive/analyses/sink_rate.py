"""Sink rate (Gu et al., arXiv 2410.10781): the share of heads whose first-token score
exceeds a threshold epsilon (`model.sink_epsilon`, default 0.3 as there), per block and
over the whole model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lit_massive.analyses.base import Analysis, Column, Forward, Setup
from lit_massive.analyses.head_scores import HeadScores
from lit_massive.analyses.layer_profile import finite
from lit_massive.analyses.registry import register_analysis
from lit_massive.probes import Needs
from lit_massive.report import head_figures
from lit_massive.report.tables import cell


def sink_rates(first_token: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """(L,) per-layer and () whole-model shares of the heads with a first-token score above
    `epsilon`, among the heads that have a score (NaN: none)."""
    measured = ~first_token.isnan()
    sinks = (first_token > epsilon) & measured
    f64 = torch.float64
    return sinks.sum(1, dtype=f64) / measured.sum(1), sinks.sum(dtype=f64) / measured.sum()


@register_analysis
class SinkRate(Analysis):
    """`sink_rate[l]` and `model_sink_rate`, from the run's first-token scores (the means
    over windows that `head_scores` reports), with the `sink_epsilon` they used."""

    name = "sink_rate"
    option = "head_scores"
    needs = Needs(attention=True)
    keys = ("sink_rate", "model_sink_rate", "sink_epsilon")

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.epsilon = setup.options["sink_epsilon"]

    def new_metric(self, setup: Setup) -> HeadScores:
        return HeadScores(setup.layout.n_layer, setup.layout.n_head, positions=1)

    def update(self, variant: str, forward: Forward) -> None:
        self.metrics[variant].update(forward.probed.received)

    def section(self, computed: dict[str, Tensor], decode: Callable[[int], str]) -> dict[str, Any]:
        per_layer, model = sink_rates(computed["first_token"], self.epsilon)
        return {
            "sink_rate": [finite(v) for v in per_layer.tolist()],
            "model_sink_rate": finite(float(model)),
            "sink_epsilon": self.epsilon,
        }

    @classmethod
    def publish(cls, out, model: str, name: str, entry: dict[str, Any]) -> None:
        rates = entry["sink_rate"]
        title = f"{model}: {name} (whole model: {cell(entry['model_sink_rate'], '.3f')})"
        fig, _ = head_figures.sink_rate_figure(rates, entry["sink_epsilon"], title)
        out.figure(f"{name}/figures/sink_rate", fig)
        for layer, value in enumerate(rates):
            out.scalar(f"{name}/sink_rate", value, layer)

    @classmethod
    def summary_columns(cls, entry: dict[str, Any]) -> list[Column]:
        return [Column(70, "model sink rate", cell(entry.get("model_sink_rate"), ".3f"))]

