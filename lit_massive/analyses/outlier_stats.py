"""Outlier statistics per block (`model.analyses.outlier_stats.enabled`): how heavy-tailed the block output's
feature dims are and how much of it lies along one direction.

For one window's block output X (T x D), with s_d the RMS over the window's tokens of dim d
and sigma_k its singular values (X itself, not centred):

- `kurtosis` = mean_d s_d^4 / (mean_d s_d^2)^2 (1 when every dim has the same RMS; a few
  massive dims make it large);
- `top_direction_share` = sigma_1^2 / sum_k sigma_k^2 (the largest singular value's share);
- `matrix_entropy` = -sum_k p_k log p_k / log(min(T, D)), p_k = sigma_k^2 / sum_k sigma_k^2
  (1: energy spread evenly over min(T, D) directions; 0: one direction).

Each is a mean over windows, per variant and layer, as keys of the `layers` rows. The
squared singular values are the eigenvalues of the smaller Gram matrix (X X^T if T < D, else
X^T X) in float64, by `torch.linalg.eigvalsh`, negatives (rounding) clamped to 0. They are
computed inside each block's hook (`reduce_block`), so only (B,) numbers per block outlive
it. Fixed shapes, and no host read of ours: a window whose block output holds inf/NaN (its
Gram is zeroed, since eigvalsh must not see inf/NaN) or is all zero (its statistics are
0 / 0) is masked out arithmetically and counted (`outlier_left_out`). But on a GPU torch's
eigendecompositions check their cuSOLVER status on the host, inside the op, so each block's
`eigvalsh` waits for the device: one wait per block and pass."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lit_massive.analyses.base import Analysis, Block, Forward, Setup, SumStatesMetric
from lit_massive.analyses.layer_profile import finite
from lit_massive.analyses.registry import register_analysis
from lit_massive.figures import outlier_stats_figures

STATISTICS = ("kurtosis", "top_direction_share", "matrix_entropy")


def gram(x: Tensor) -> Tensor:
    """The smaller Gram matrix of each window's (T, D) block output: X X^T (B, T, T) if T < D,
    else X^T X (B, D, D); both have the squared singular values as eigenvalues."""
    return x @ x.mT if x.shape[-2] < x.shape[-1] else x.mT @ x


def window_statistics(s2: Tensor, spectrum: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per window (B,): kurtosis, top-direction share and matrix entropy, from the mean
    square over tokens of each dim `s2` (B, D) and the squared singular values `spectrum`
    (B, min(T, D)), both float64. 0 / 0 (an all-zero window) gives NaN, which the caller
    masks out."""
    kurtosis = s2.square().mean(dim=1) / s2.mean(dim=1).square()
    p = spectrum / spectrum.sum(dim=1, keepdim=True)
    share = p.max(dim=1).values
    n = spectrum.shape[1]  # a host int: the shape, not the data
    entropy = -torch.xlogy(p, p).sum(dim=1) / (math.log(n) if n > 1 else 1.0)
    return kurtosis, share, entropy


def block_outlier_stats(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per window of one block output x (B, T, D), any float dtype: (kurtosis, top-direction
    share, matrix entropy, kept), float64 and bool (B,); a window that is not kept (inf/NaN
    somewhere, or all zero) has 0 statistics. Inf/NaN anywhere in a window makes its sum of
    squares non-finite: that Gram is zeroed, since eigvalsh must not see inf/NaN."""
    x = x.detach().double()
    s2 = x.square().mean(dim=1)  # (B, D): s_d^2
    ok = torch.isfinite(s2.sum(dim=1))
    spectrum = torch.linalg.eigvalsh(torch.where(ok[:, None, None], gram(x), 0.0)).clamp_min(0.0)
    keep = ok & (spectrum.sum(dim=1) > 0)
    values = [torch.where(keep, value, 0.0) for value in window_statistics(s2, spectrum)]
    return (*values, keep)


class OutlierStats(SumStatesMetric):
    """Per layer: sums over windows of each statistic, the windows they hold, and the windows
    left out (block output not finite, or all zero)."""

    kurtosis: Tensor  # (L,) float64 sums
    top_direction_share: Tensor  # (L,) float64 sums
    matrix_entropy: Tensor  # (L,) float64 sums
    windows: Tensor  # (L,) int64, windows in the sums
    left_out: Tensor  # (L,) int64

    def __init__(self, n_layer: int, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in STATISTICS:
            self.add_state(name, torch.zeros(n_layer, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("windows", "left_out"):
            self.add_state(name, torch.zeros(n_layer, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, blocks: list[tuple[Tensor, Tensor, Tensor, Tensor]]) -> None:
        """Add one batch: `blocks[i]` is layer i's `block_outlier_stats`."""
        for i, (*values, keep) in enumerate(blocks):
            for name, value in zip(STATISTICS, values, strict=True):
                getattr(self, name)[i] += value.sum()
            self.windows[i] += keep.sum()
            self.left_out[i] += (~keep).sum()

    def compute(self) -> dict[str, Tensor]:
        """Means over each layer's windows (NaN where none was kept) and the counts."""
        n = self.windows.to(torch.float64)
        return {
            **{name: getattr(self, name) / n for name in STATISTICS},
            "windows": self.windows,
            "left_out": self.left_out,
        }


def outlier_rows(computed: dict[str, Tensor]) -> list[dict[str, Any]]:
    """Per layer, its keys of the `layers` row: the three means (null where no window was
    kept) and the windows left out."""
    columns = {name: computed[name].tolist() for name in STATISTICS}
    return [
        {**{name: finite(columns[name][i]) for name in STATISTICS}, "outlier_left_out": int(left_out)}
        for i, left_out in enumerate(computed["left_out"].tolist())
    ]


@dataclass
class OutlierStatsOptions:
    """Per block, kurtosis of the per-dim RMS, top-direction share and matrix entropy of the
    block output (keys of ``layers``; an eigendecomposition per window and block).

    Args:
        enabled: measure it.
    """

    enabled: bool = False


@register_analysis
class OutlierStatsAnalysis(Analysis):
    """Kurtosis, top-direction share and matrix entropy of every block output, per variant."""

    name = "outlier_stats"
    Options = OutlierStatsOptions
    moved = {"outlier_stats": "enabled"}
    layer_keys = (*STATISTICS, "outlier_left_out")
    reduces_blocks = True

    def new_metric(self, setup: Setup) -> OutlierStats:
        return OutlierStats(setup.layout.n_layer)

    def reduce_block(self, block: Block) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return block_outlier_stats(block.output)

    def update(self, variant: str, forward: Forward) -> None:
        self.metrics[variant].update(forward.probed.reduced[self.name])

    def section(self, computed: dict[str, Tensor], decode: Callable[[int], str]) -> dict[str, Any]:
        return {"layers": outlier_rows(computed)}  # merged into the layer profile's rows

    @classmethod
    def publish(cls, out, model: str, name: str, entry: dict[str, Any]) -> None:
        layers = entry["layers"]
        for row in layers:  # curves whose x axis (step) is the layer
            for key in STATISTICS:
                out.scalar(f"{name}/outlier_stats/{key}", row[key], row["layer"])
        out.figure(f"{name}/figures/outlier_stats", outlier_stats_figures.outlier_figure(layers, f"{model}: {name}")[0])
