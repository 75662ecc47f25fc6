"""torchmetrics accumulators. Every state is a sum, so merging processes is exact."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lit_massive.functional import flat_location, massive_mask, sequence_profile


def _rows(state: list[Tensor] | Tensor, width: int) -> Tensor:
    """A "cat" state as one tensor (after a sync it already is one)."""
    if isinstance(state, Tensor):
        return state
    return torch.cat(state) if state else torch.zeros(0, width, dtype=torch.float64)


class SumStatesMetric(Metric):
    """A metric of sums whose states keep their dtype (float64, int64) when the module is
    cast to half precision (`16-true` / `bf16-true` call `module.to(dtype)`, which would
    otherwise turn float64 sums into float16 ones)."""

    def add_state(self, name: str, default: Tensor | list, *args, **kwargs) -> None:
        super().add_state(name, default, *args, **kwargs)
        if isinstance(default, Tensor):
            self.__dict__.setdefault("_state_dtypes", {})[name] = default.dtype

    def _apply(self, fn: Callable, *args, **kwargs) -> Metric:
        out = super()._apply(fn, *args, **kwargs)
        for name, dtype in self.__dict__.get("_state_dtypes", {}).items():
            setattr(self, name, getattr(self, name).to(dtype))
            self._defaults[name] = self._defaults[name].to(dtype)
        return out


class LayerProfile(SumStatesMetric):
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
    massive_rows: list[Tensor]  # (n, 5) float64 each: layer, dim, position, token, value
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
        # every massive entry of every sequence: few, so gathered as rows, not summed densely
        self.add_state("massive_rows", [], dist_reduce_fx="cat")
        for name, size in (
            ("top1_dim_count", hidden_size),
            ("top1_position_count", max_positions),
            ("top1_token_count", vocab_size),
        ):
            self.add_state(name, torch.zeros(num_layers, size, dtype=i64), dist_reduce_fx="sum")

    def update(self, block_outputs: Sequence[Tensor], input_ids: Tensor) -> None:
        """Add one batch: `block_outputs[i]` is block i's output (B, T, D) for `input_ids` (B, T)."""
        rows = [torch.zeros(0, 5, dtype=torch.float64, device=input_ids.device)]
        for i, x in enumerate(block_outputs):
            a, top, idx, median = sequence_profile(x, self.k)
            # inf and NaN sort above every finite value, so a finite top-1 means a finite row
            finite = torch.isfinite(top[:, 0])
            if not bool(finite.all()):
                self.nonfinite_values[i] += (~torch.isfinite(x)).sum()
                a, top, idx, median = a[finite], top[finite], idx[finite], median[finite]
                input_ids_i, signed = input_ids[finite], x[finite]
            else:
                input_ids_i, signed = input_ids, x
            self.finite_count[i] += top.shape[0]
            self.top_sum[i] += top.sum(0, dtype=torch.float64)
            self.median_sum[i] += median.sum(dtype=torch.float64)
            t1 = top[:, 0]
            massive = (t1 > self.massive_threshold) & (t1 > self.massive_ratio * median)
            self.massive_count[i] += massive.sum()
            if bool(massive.any()):  # the top-1 is the largest: no massive top-1, no massive entry
                seq, flat = massive_mask(a, median, self.massive_threshold, self.massive_ratio).nonzero(as_tuple=True)
                dim, position = flat_location(flat, self.hidden_size)
                value = signed.flatten(1)[seq, flat].double()
                layer = torch.full_like(value, i)
                rows.append(
                    torch.stack(
                        [layer, dim.double(), position.double(), input_ids_i[seq, position].double(), value],
                        1,
                    )
                )
            dim, position = flat_location(idx[:, 0], self.hidden_size)
            token = input_ids_i.gather(1, position[:, None]).squeeze(1)
            for state, where in (
                (self.top1_dim_count, dim),
                (self.top1_position_count, position),
                (self.top1_token_count, token),
            ):
                state[i] += torch.bincount(where, minlength=state.shape[1])
        self.massive_rows.append(torch.cat(rows))
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
            "massive_rows": _rows(self.massive_rows, 5),
            "top1_dim_count": self.top1_dim_count,
            "top1_position_count": self.top1_position_count,
            "top1_token_count": self.top1_token_count,
        }


class HeadScores(SumStatesMetric):
    """Per (layer, head): attention probability on token 0, averaged over query positions,
    then over sequences. A non-finite score (half-precision overflow upstream) is left out
    of its head's mean and counted."""

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    score_sum: Tensor  # (L, H) float64
    count: Tensor  # (L, H) int64, sequences with a finite score
    nonfinite: Tensor  # (L, H) int64

    def __init__(self, num_layers: int, num_heads: int, **kwargs) -> None:
        super().__init__(**kwargs)
        shape = (num_layers, num_heads)
        self.add_state("score_sum", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(shape, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("nonfinite", torch.zeros(shape, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, per_layer: Sequence[Tensor]) -> None:
        """`per_layer[i]` is (B, H): each sequence's mean first-token attention in block i."""
        for i, scores in enumerate(per_layer):
            finite = torch.isfinite(scores)
            self.score_sum[i] += torch.where(finite, scores, 0.0).sum(0, dtype=torch.float64)
            self.count[i] += finite.sum(0)
            self.nonfinite[i] += (~finite).sum(0)

    def compute(self) -> Tensor:
        """(L, H) means; NaN for a head with no finite score."""
        return self.score_sum / self.count


class Perplexity(SumStatesMetric):
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

    def update(self, total: Tensor, tokens: Tensor, nonfinite: Tensor) -> None:
        """One batch's NLL sum, scored tokens and non-finite token losses (`token_nll`)."""
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


class Components(SumStatesMetric):
    """For each massive (dim, position) of a sequence, what enters every block there and
    what its attention and MLP add: rows of (dim, position, layer, resid_in, attn, mlp)."""

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    rows: list[Tensor]  # (n, 6) float64 each

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("rows", [], dist_reduce_fx="cat")

    def update(
        self,
        block_inputs: Sequence[Tensor],
        attn_outputs: Sequence[Tensor],
        mlp_outputs: Sequence[Tensor],
        entries: Tensor,
    ) -> None:
        """`entries` (m, 3): (sequence, dim, position) triples to follow through every block."""
        seq, dim, pos = entries.unbind(1)
        rows = [torch.zeros(0, 6, dtype=torch.float64, device=entries.device)]
        for i, (x_in, attn, mlp) in enumerate(zip(block_inputs, attn_outputs, mlp_outputs, strict=True)):
            parts = [t[seq, pos, dim].double() for t in (x_in, attn, mlp)]
            rows.append(torch.stack([dim.double(), pos.double(), torch.full_like(parts[0], i), *parts], 1))
        self.rows.append(torch.cat(rows))

    def compute(self) -> Tensor:
        return _rows(self.rows, 6)


class VariantMetrics(nn.Module):
    """A run's metric objects, one per variant and measurement (torchmetrics' advice: one
    instance per loader or stage). `profiles` always; `head_scores`, `perplexities` and
    `components` are empty when that measurement is off."""

    def __init__(
        self,
        names: list[str],
        new_profile: Callable[[], LayerProfile],
        num_layers: int,
        num_heads: int,
        head_scores: bool,
        perplexity: bool,
        components: bool,
    ) -> None:
        super().__init__()
        self.profiles = nn.ModuleDict({n: new_profile() for n in names})
        self.head_scores = nn.ModuleDict({n: HeadScores(num_layers, num_heads) for n in names} if head_scores else {})
        self.perplexities = nn.ModuleDict({n: Perplexity() for n in names} if perplexity else {})
        self.components = nn.ModuleDict({n: Components() for n in names} if components else {})
        self.names = names

    def compute(self) -> dict[str, dict[str, Any]]:
        """Per variant: `profile`, `head_scores`, `perplexity`, `components` (None when off);
        then every metric is reset for the next pass. compute() syncs states across
        processes, so every rank must call it."""
        groups = {
            "profile": self.profiles,
            "head_scores": self.head_scores,
            "perplexity": self.perplexities,
            "components": self.components,
        }
        computed = {
            name: {key: group[name].compute() if name in group else None for key, group in groups.items()}
            for name in self.names
        }
        for group in groups.values():
            for metric in group.values():
                metric.reset()
        return computed
