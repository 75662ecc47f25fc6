"""What the per-head figures of the attention internals share: a state that averages (B, H)
per-window values of every layer over windows (exact float64 sums, synced by torchmetrics),
and their results.json form, an L x H matrix like `head_scores`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lit_massive.analyses.base import Analysis, Forward, Setup, SumStatesMetric
from lit_massive.analyses.head_scores import matrix
from lit_massive.probes import Needs


class HeadMeans(SumStatesMetric):
    """Per named figure and (layer, head): the mean over windows of a per-window value. A
    window whose value is not finite (no query to average over, or half-precision overflow
    upstream) is left out of that head's mean; a head with no window left is NaN (null)."""

    sums: Tensor  # (F, L, H) float64
    counts: Tensor  # (F, L, H) int64

    def __init__(self, figures: Sequence[str], n_layer: int, n_head: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.figures = tuple(figures)
        shape = (len(self.figures), n_layer, n_head)
        self.add_state("sums", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", torch.zeros(shape, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, values: dict[str, list[Tensor]]) -> None:
        """`values[figure][layer]`: (B, H) per-window values of that layer."""
        for f, figure in enumerate(self.figures):
            x = torch.stack(values[figure])  # (L, B, H)
            ok = torch.isfinite(x)
            self.sums[f] += torch.where(ok, x, 0.0).sum(1, dtype=torch.float64)
            self.counts[f] += ok.sum(1)

    def compute(self) -> dict[str, Tensor]:
        """Figure -> (L, H) means, NaN where no window counted."""
        means = self.sums / self.counts
        return {figure: means[f] for f, figure in enumerate(self.figures)}


@dataclass
class HeadInternalsOptions:
    """What happens inside every head: value norms, output norms, the massive tokens' value
    update, logit gaps and the first-token logit's factors (on with head scores).

    Args:
        enabled: measure them with the head scores, in the same pass; false: cheaper.
    """

    enabled: bool = True


class HeadFiguresAnalysis(Analysis):
    """An analysis whose keys are (L, H) per-head figures, each a `HeadMeans` mean over
    windows, measured from the attention internals (`Needs.heads`) when head scores are on.
    Subclasses say how a forward pass gives each key's (B, H) values per layer (`values`).
    On with head scores unless ``model.analyses.head_internals.enabled: false``."""

    Options = HeadInternalsOptions
    group = "head_internals"
    requires = ("head_scores",)
    moved = {"head_internals": "enabled"}
    needs = Needs(heads=True)

    def new_metric(self, setup: Setup) -> HeadMeans:
        return HeadMeans(self.keys, setup.layout.n_layer, setup.layout.n_head)

    def values(self, forward: Forward) -> dict[str, list[Tensor]]:
        """Key -> per layer, (B, H) per-window values."""
        raise NotImplementedError

    def update(self, variant: str, forward: Forward) -> None:
        self.metrics[variant].update(self.values(forward))

    def section(self, computed: dict[str, Tensor], decode: Callable[[int], str]) -> dict[str, Any]:
        return {key: matrix(computed[key]) for key in self.keys}
