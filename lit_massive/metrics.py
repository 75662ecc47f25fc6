"""torchmetrics accumulators. Every state is a sum, so merging processes is exact."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from lit_massive.functional import sequence_profile, top1_location


class LayerProfile(Metric):
    """Per block: mean over sequences of the top-k and median of |block output|; how often
    each feature dim, token position and token holds the per-sequence top-1; and the share
    of sequences whose top-1 is massive (> threshold and > ratio x that sequence's median)."""

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    top_sum: Tensor  # (L, k) float64
    median_sum: Tensor  # (L,) float64
    count: Tensor  # () int64, sequences seen
    massive_count: Tensor  # (L,) int64, sequences whose top-1 meets the massive criterion
    top1_dim_count: Tensor  # (L, D) int64
    top1_position_count: Tensor  # (L, T_max) int64
    top1_token_count: Tensor  # (L, V) int64

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        max_positions: int,
        vocab_size: int,
        k: int = 3,
        massive_threshold: float = 100.0,
        massive_ratio: float = 1000.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.k = k
        self.massive_threshold = massive_threshold
        self.massive_ratio = massive_ratio
        self.hidden_size = hidden_size
        f64, i64 = torch.float64, torch.int64
        self.add_state("top_sum", torch.zeros(num_layers, k, dtype=f64), dist_reduce_fx="sum")
        self.add_state("median_sum", torch.zeros(num_layers, dtype=f64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=i64), dist_reduce_fx="sum")
        self.add_state("massive_count", torch.zeros(num_layers, dtype=i64), dist_reduce_fx="sum")
        for name, size in (
            ("top1_dim_count", hidden_size),
            ("top1_position_count", max_positions),
            ("top1_token_count", vocab_size),
        ):
            self.add_state(name, torch.zeros(num_layers, size, dtype=i64), dist_reduce_fx="sum")

    def update(self, block_outputs: Sequence[Tensor], input_ids: Tensor) -> None:
        """Add one batch: `block_outputs[i]` is block i's output (B, T, D) for `input_ids` (B, T)."""
        for i, x in enumerate(block_outputs):
            top, idx, median = sequence_profile(x, self.k)
            self.top_sum[i] += top.sum(0, dtype=torch.float64)
            self.median_sum[i] += median.sum(dtype=torch.float64)
            t1 = top[:, 0]
            massive = (t1 > self.massive_threshold) & (t1 > self.massive_ratio * median)
            self.massive_count[i] += massive.sum()
            dim, position = top1_location(idx[:, 0], self.hidden_size)
            token = input_ids.gather(1, position[:, None]).squeeze(1)
            for state, where in (
                (self.top1_dim_count, dim),
                (self.top1_position_count, position),
                (self.top1_token_count, token),
            ):
                state[i] += torch.bincount(where, minlength=state.shape[1])
        self.count += input_ids.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """Means over sequences, plus the raw top-1 location counts."""
        n = self.count.clamp(min=1).to(torch.float64)
        return {
            "top": self.top_sum / n,
            "median": self.median_sum / n,
            "count": self.count,
            "massive_fraction": self.massive_count / n,
            "top1_dim_count": self.top1_dim_count,
            "top1_position_count": self.top1_position_count,
            "top1_token_count": self.top1_token_count,
        }


class HeadScores(Metric):
    """Per (layer, head): attention probability on token 0, averaged over query positions,
    then over sequences."""

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    score_sum: Tensor  # (L, H) float64
    count: Tensor  # () int64

    def __init__(self, num_layers: int, num_heads: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("score_sum", torch.zeros(num_layers, num_heads, dtype=torch.float64), "sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, per_layer: Sequence[Tensor]) -> None:
        """`per_layer[i]` is (B, H): each sequence's mean first-token attention in block i."""
        for i, scores in enumerate(per_layer):
            self.score_sum[i] += scores.sum(0, dtype=torch.float64)
        self.count += per_layer[0].shape[0]

    def compute(self) -> Tensor:
        return self.score_sum / self.count.clamp(min=1)
