"""torchmetrics accumulators. Every state is a sum, so merging processes is exact."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from lit_massive.functional import sequence_profile, token_nll, top1_location


class SumMetric(Metric):
    """A metric of sums whose states keep their dtype (float64, int64) when the module is
    cast to half precision (`16-true` / `bf16-true` call `module.to(dtype)`, which would
    otherwise turn float64 sums into float16 ones)."""

    def add_state(self, name: str, default: Tensor, *args, **kwargs) -> None:
        super().add_state(name, default, *args, **kwargs)
        self.__dict__.setdefault("_state_dtypes", {})[name] = default.dtype

    def _apply(self, fn: Callable, *args, **kwargs) -> Metric:
        out = super()._apply(fn, *args, **kwargs)
        for name, dtype in self._state_dtypes.items():
            setattr(self, name, getattr(self, name).to(dtype))
            self._defaults[name] = self._defaults[name].to(dtype)
        return out


class LayerProfile(SumMetric):
    """Per block: mean over sequences of the top-k and median of |block output|; how often
    each feature dim, token position and token holds the per-sequence top-1; and the share
    of sequences whose top-1 is massive (> threshold and > ratio x that sequence's median).

    A sequence whose block output holds inf/NaN (a half-precision overflow) is left out of
    that block's statistics and counted instead, so overflow never turns a mean into inf."""

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    top_sum: Tensor  # (L, k) float64
    median_sum: Tensor  # (L,) float64
    count: Tensor  # () int64, sequences seen
    tokens: Tensor  # () int64, tokens seen
    finite_count: Tensor  # (L,) int64, sequences whose block output is all finite
    nonfinite_values: Tensor  # (L,) int64, inf/NaN entries in block outputs
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
        self.add_state("tokens", torch.zeros((), dtype=i64), dist_reduce_fx="sum")
        self.add_state("finite_count", torch.zeros(num_layers, dtype=i64), dist_reduce_fx="sum")
        self.add_state("nonfinite_values", torch.zeros(num_layers, dtype=i64), dist_reduce_fx="sum")
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
            # inf and NaN sort above every finite value, so a finite top-1 means a finite row
            finite = torch.isfinite(top[:, 0])
            if not bool(finite.all()):
                self.nonfinite_values[i] += (~torch.isfinite(x)).sum()
                top, idx, median, input_ids_i = top[finite], idx[finite], median[finite], input_ids[finite]
            else:
                input_ids_i = input_ids
            self.finite_count[i] += top.shape[0]
            self.top_sum[i] += top.sum(0, dtype=torch.float64)
            self.median_sum[i] += median.sum(dtype=torch.float64)
            t1 = top[:, 0]
            massive = (t1 > self.massive_threshold) & (t1 > self.massive_ratio * median)
            self.massive_count[i] += massive.sum()
            dim, position = top1_location(idx[:, 0], self.hidden_size)
            token = input_ids_i.gather(1, position[:, None]).squeeze(1)
            for state, where in (
                (self.top1_dim_count, dim),
                (self.top1_position_count, position),
                (self.top1_token_count, token),
            ):
                state[i] += torch.bincount(where, minlength=state.shape[1])
        self.count += input_ids.shape[0]
        self.tokens += input_ids.numel()

    def compute(self) -> dict[str, Tensor]:
        """Means over each block's finite sequences (NaN where there are none), plus the raw
        top-1 location and overflow counts."""
        n = self.finite_count.to(torch.float64)
        return {
            "top": self.top_sum / n[:, None],
            "median": self.median_sum / n,
            "count": self.count,
            "tokens": self.tokens,
            "finite_count": self.finite_count,
            "nonfinite_values": self.nonfinite_values,
            "massive_fraction": self.massive_count / n,
            "top1_dim_count": self.top1_dim_count,
            "top1_position_count": self.top1_position_count,
            "top1_token_count": self.top1_token_count,
        }


class HeadScores(SumMetric):
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


class Perplexity(SumMetric):
    """Token-level perplexity from summed next-token NLL (float64) and token counts."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    nll_sum: Tensor  # () float64
    tokens: Tensor  # () int64, scored tokens
    nonfinite_tokens: Tensor  # () int64, scored tokens whose NLL was inf/NaN (not in nll_sum)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("nll_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("nonfinite_tokens", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, input_ids: Tensor, score_from: Tensor) -> None:
        total, tokens, nonfinite = token_nll(logits, input_ids, score_from)
        self.nll_sum += total
        self.tokens += tokens
        self.nonfinite_tokens += nonfinite

    def compute(self) -> dict[str, Tensor]:
        """exp(NLL sum / tokens); NaN when any scored token's NLL was not finite."""
        ppl = torch.exp(self.nll_sum / self.tokens.clamp(min=1))
        if self.nonfinite_tokens > 0:
            ppl = torch.full_like(ppl, float("nan"))
        return {
            "perplexity": ppl,
            "nll_sum": self.nll_sum,
            "tokens": self.tokens,
            "nonfinite_tokens": self.nonfinite_tokens,
        }
