"""Sink rate as Gu et al. define it (arXiv 2410.10781, "When Attention Sink Emerges", section
3.2 and their evaluation code): in one window, key k of head h in layer l receives

    alpha_k = sum_{i may attend to k} A_ik / (number of queries that may attend to k)

(T - k queries under a causal mask, fewer under a sliding window), and the head is a sink in
that window when alpha_0 > epsilon (`model.analyses.sink_rate.epsilon`, 0.3 as there). The sink rate is the
share of (window, head) pairs that sink, per layer, and of (window, layer, head) over the
model; `key_sink_rate` is the same share for each of the first `model.analyses.head_scores.received_positions`
keys (a secondary sink: a key other than the first that heads sink on)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lit_massive.analyses.base import Analysis, Column, Forward, Setup, SumStatesMetric
from lit_massive.analyses.head_scores import matrix
from lit_massive.analyses.layer_profile import finite
from lit_massive.analyses.registry import register_analysis
from lit_massive.figures import figures, head_figures
from lit_massive.options import NonNegativeFloat
from lit_massive.probes import Needs
from lit_massive.results.markdown import cell


def key_attention(received: Tensor, attended: Tensor) -> Tensor:
    """Gu et al.'s alpha_k (B, H, T) from what each key receives averaged over all T queries
    (`received`, (B, H, T)) and how many queries may attend to it (`attended`, broadcastable)."""
    return received * received.shape[-1] / attended


class SinkCounts(SumStatesMetric):
    """Per layer, the (window, head) pairs whose alpha_0 exceeds epsilon and those measured;
    per (layer, leading key k), the pairs whose alpha_k does and those measured (windows
    longer than k). A pair whose attention is not finite (half-precision overflow upstream) is
    left out, as in the head scores."""

    sinks: Tensor  # (L,) int64
    measured: Tensor  # (L,) int64
    key_sinks: Tensor  # (L, P) int64
    key_measured: Tensor  # (L, P) int64

    def __init__(self, n_layer: int, positions: int, epsilon: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.positions, self.epsilon = positions, epsilon
        i64 = torch.int64
        self.add_state("sinks", torch.zeros(n_layer, dtype=i64), dist_reduce_fx="sum")
        self.add_state("measured", torch.zeros(n_layer, dtype=i64), dist_reduce_fx="sum")
        self.add_state("key_sinks", torch.zeros(n_layer, positions, dtype=i64), dist_reduce_fx="sum")
        self.add_state("key_measured", torch.zeros(n_layer, positions, dtype=i64), dist_reduce_fx="sum")

    def update(self, received: list[Tensor], attended: list[Tensor]) -> None:
        """Per layer, `received` (B, H, T) and `attended` (queries per key) of one pass."""
        for i, (r, n) in enumerate(zip(received, attended, strict=True)):
            ok = torch.isfinite(r).all(dim=-1)  # (B, H)
            p = min(self.positions, r.shape[-1])
            sinks = (key_attention(r, n)[..., :p] > self.epsilon) & ok[..., None]  # (B, H, p)
            self.sinks[i] += sinks[..., 0].sum()
            self.measured[i] += ok.sum()
            self.key_sinks[i, :p] += sinks.sum(dim=(0, 1))
            self.key_measured[i, :p] += ok.sum()

    def compute(self) -> dict[str, Tensor]:
        """(L,) sink rate, () model sink rate, (L, P) key sink rate (NaN past the windows), (P,)
        key sink rate over the model."""
        f64 = torch.float64
        return {
            "sink_rate": self.sinks.to(f64) / self.measured,
            "model_sink_rate": self.sinks.sum().to(f64) / self.measured.sum(),
            "key_sink_rate": self.key_sinks.to(f64) / self.key_measured,
            "model_key_sink_rate": self.key_sinks.sum(0).to(f64) / self.key_measured.sum(0),
        }


@dataclass
class SinkRateOptions:
    """When a head sinks in a window (on with head scores; the secondary sinks use it too).

    Args:
        epsilon: a head sinks in a window when the first key's alpha_0 exceeds this, alpha_k
            being the attention key k receives averaged over the queries that may attend to it
            (Gu et al., arXiv 2410.10781: 0.3).
    """

    epsilon: NonNegativeFloat = 0.3


@register_analysis
class SinkRate(Analysis):
    """`sink_rate[l]`, `model_sink_rate`, `key_sink_rate[l][k]`, `model_key_sink_rate[k]`
    (shares in [0, 1], Gu et al.'s formula above) and the `sink_epsilon` they used."""

    name = "sink_rate"
    Options = SinkRateOptions
    requires = ("head_scores",)
    moved = {"sink_epsilon": "epsilon"}
    needs = Needs(attention=True)
    keys = ("sink_rate", "model_sink_rate", "key_sink_rate", "model_key_sink_rate", "sink_epsilon")

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.epsilon = setup.of("sink_rate").epsilon

    def new_metric(self, setup: Setup) -> SinkCounts:
        return SinkCounts(
            setup.layout.n_layer, setup.of("head_scores").received_positions, setup.of("sink_rate").epsilon
        )

    def update(self, variant: str, forward: Forward) -> None:
        self.metrics[variant].update(forward.probed.received, forward.probed.attended)

    def section(self, computed: dict[str, Tensor], decode: Callable[[int], str]) -> dict[str, Any]:
        return {
            "sink_rate": [finite(v) for v in computed["sink_rate"].tolist()],
            "model_sink_rate": finite(float(computed["model_sink_rate"])),
            "key_sink_rate": matrix(computed["key_sink_rate"]),
            "model_key_sink_rate": [finite(v) for v in computed["model_key_sink_rate"].tolist()],
            "sink_epsilon": self.epsilon,
        }

    @classmethod
    def publish(cls, out, model: str, name: str, entry: dict[str, Any]) -> None:
        rates, epsilon = entry["sink_rate"], entry["sink_epsilon"]
        title = f"{model}: {name} (whole model: {cell(entry['model_sink_rate'], '.3f')})"
        fig, _ = head_figures.sink_rate_figure(rates, epsilon, title)
        out.figure(f"{name}/figures/sink_rate", fig)
        for layer, value in enumerate(rates):
            out.scalar(f"{name}/sink_rate", value, layer)
        fig, _ = figures.key_sink_rate_figure(entry["key_sink_rate"], epsilon, f"{model}: {name}")
        out.figure(f"{name}/figures/key_sink_rate", fig)
        for key, value in enumerate(entry["model_key_sink_rate"]):
            out.scalar(f"{name}/key_sink_rate", value, key)

    @classmethod
    def summary_columns(cls, entry: dict[str, Any]) -> list[Column]:
        return [Column(70, "model sink rate", cell(entry.get("model_sink_rate"), ".3f"))]
