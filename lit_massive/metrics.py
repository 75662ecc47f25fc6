"""torchmetrics accumulators. Every state is a sum, so merging processes is exact."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lit_massive.functional import BlockStats, block_stats, flat_location


def _rows(state: list[Tensor] | Tensor, width: int) -> Tensor:
    """A "cat" state as one tensor (after a sync it already is one)."""
    if isinstance(state, Tensor):
        return state
    return torch.cat(state) if state else torch.zeros(0, width, dtype=torch.float64)


def _valid_rows(rows: Tensor) -> Tensor:
    """Fixed-shape candidate rows whose last column says they hold a real entry, without it
    (once per epoch, so the host may read the mask here)."""
    return rows[rows[:, -1] > 0][:, :-1]


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
    each feature dim, token position and token holds the per-sequence top-1; the share of
    sequences whose top-1 is massive; and every massive entry (the locator's rows).

    A sequence whose block output holds inf/NaN (a half-precision overflow) is left out of
    that block's statistics and counted instead, so overflow never turns a mean into inf.
    `update` reads nothing back to the host: sequences are masked arithmetically, counts
    are `index_add_`, and the locator keeps fixed-shape candidate rows with a validity
    column, filtered once in `compute`."""

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
    locator_overflow: Tensor  # (L,) int64, sequences with more massive entries than candidates
    massive_rows: list[Tensor]  # (n, 6) float32 each: layer, dim, position, token, value, valid
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
        candidates: int = 256,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.k = k
        self.hidden_size = hidden_size
        self.stats_of = partial(
            block_stats, k=k, candidates=candidates, threshold=massive_threshold, ratio=massive_ratio
        )
        f64, i64 = torch.float64, torch.int64
        self.add_state("top_sum", torch.zeros(num_layers, k, dtype=f64), dist_reduce_fx="sum")
        self.add_state("median_sum", torch.zeros(num_layers, dtype=f64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=i64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.zeros((), dtype=i64), dist_reduce_fx="sum")
        for name in ("finite_count", "nonfinite_values", "massive_count", "locator_overflow"):
            self.add_state(name, torch.zeros(num_layers, dtype=i64), dist_reduce_fx="sum")
        # candidate rows of every sequence: few per sequence, so gathered as rows, not summed densely
        self.add_state("massive_rows", [], dist_reduce_fx="cat")
        for name, size in (
            ("top1_dim_count", hidden_size),
            ("top1_position_count", max_positions),
            ("top1_token_count", vocab_size),
        ):
            self.add_state(name, torch.zeros(num_layers, size, dtype=i64), dist_reduce_fx="sum")

    def update(self, block_outputs: Sequence[Tensor | BlockStats], input_ids: Tensor) -> None:
        """Add one batch: `block_outputs[i]` is block i's output (B, T, D) for `input_ids`
        (B, T), or its `BlockStats` (`stats_of`), which the module computes once per block
        for the profile and the components."""
        rows = []
        for i, s in enumerate(block_outputs):
            if not isinstance(s, BlockStats):
                s = self.stats_of(s)
            finite = s.finite
            self.nonfinite_values[i] += s.nonfinite
            self.finite_count[i] += finite.sum()
            self.top_sum[i] += torch.where(finite[:, None], s.top, 0.0).sum(0, dtype=torch.float64)
            self.median_sum[i] += torch.where(finite, s.median, 0.0).sum(dtype=torch.float64)
            self.massive_count[i] += s.massive[:, 0].sum()  # the top-1 is the first candidate
            self.locator_overflow[i] += s.overflow.sum()
            dim, position = flat_location(s.top_index[:, 0], self.hidden_size)
            token = input_ids.gather(1, position[:, None]).squeeze(1)
            for state, where in (
                (self.top1_dim_count, dim),
                (self.top1_position_count, position),
                (self.top1_token_count, token),
            ):
                state[i].index_add_(0, where, finite.long())
            dim, position = flat_location(s.candidate_index, self.hidden_size)  # (B, K)
            columns = (torch.full_like(dim, i), dim, position, input_ids.gather(1, position))
            # float32 rows: ids, dims and positions are exact below 2**24; values are float32 already
            rows.append(
                torch.stack([*(c.float() for c in columns), s.candidate_value, s.massive.float()], -1).flatten(0, 1)
            )
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
            "locator_overflow": self.locator_overflow,
            "massive_rows": _valid_rows(_rows(self.massive_rows, 6)),
            "top1_dim_count": self.top1_dim_count,
            "top1_position_count": self.top1_position_count,
            "top1_token_count": self.top1_token_count,
        }


class HeadScores(SumStatesMetric):
    """Per (layer, head): the attention probability on token 0 (first-token score) and on
    the window's massive tokens (massive-token score), each averaged over query positions,
    then over sequences; per layer, the attention each of the first `positions` key
    positions receives, averaged over heads, queries and sequences. A sequence whose scores
    are not finite (half-precision overflow upstream) is left out of that layer's means
    and counted."""

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    score_sum: Tensor  # (L, H) float64, first-token scores
    massive_sum: Tensor  # (L, H) float64, massive-token scores
    count: Tensor  # (L, H) int64, sequences with a finite score
    nonfinite: Tensor  # (L, H) int64
    received_sum: Tensor  # (L, P) float64
    received_count: Tensor  # (L, P) int64, sequences long enough to have that position, finite

    def __init__(self, num_layers: int, num_heads: int, positions: int = 16, **kwargs) -> None:
        super().__init__(**kwargs)
        self.positions = positions
        f64, i64 = torch.float64, torch.int64
        for name, dtype in (("score_sum", f64), ("massive_sum", f64), ("count", i64), ("nonfinite", i64)):
            self.add_state(name, torch.zeros(num_layers, num_heads, dtype=dtype), dist_reduce_fx="sum")
        self.add_state("received_sum", torch.zeros(num_layers, positions, dtype=f64), dist_reduce_fx="sum")
        self.add_state("received_count", torch.zeros(num_layers, positions, dtype=i64), dist_reduce_fx="sum")

    def update(self, received: Sequence[Tensor], massive: Tensor | None = None) -> None:
        """`received[i]` (B, H, T): what each key position receives in block i (mean over
        queries); `massive` (B, T) bool: each window's massive tokens (None: none)."""
        for i, r in enumerate(received):
            finite = torch.isfinite(r).all(dim=-1)  # (B, H)
            on_massive = r.mul(massive[:, None, :]).sum(-1) if massive is not None else torch.zeros_like(r[..., 0])
            self.score_sum[i] += torch.where(finite, r[..., 0], 0.0).sum(0, dtype=torch.float64)
            self.massive_sum[i] += torch.where(finite, on_massive, 0.0).sum(0, dtype=torch.float64)
            self.count[i] += finite.sum(0)
            self.nonfinite[i] += (~finite).sum(0)
            p = min(self.positions, r.shape[-1])
            window_ok = finite.all(dim=-1)  # (B,)
            head_mean = torch.where(window_ok[:, None], r[..., :p].mean(dim=1), 0.0)  # (B, p)
            self.received_sum[i, :p] += head_mean.sum(0, dtype=torch.float64)
            self.received_count[i, :p] += window_ok.sum()

    def compute(self) -> dict[str, Tensor]:
        """(L, H) first-token and massive-token means (NaN for a head with no finite score),
        (L, P) received attention (NaN past the window length) and (L,) attention to
        massive tokens: the share of all attention mass on them, mean over heads."""
        massive = self.massive_sum / self.count
        return {
            "first_token": self.score_sum / self.count,
            "massive_tokens": massive,
            "received": self.received_sum / self.received_count,
            "attention_to_massive": massive.mean(dim=1),
        }


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
    what its attention and MLP add: rows of (dim, position, layer, resid_in, attn, mlp),
    kept as fixed-shape candidate rows with a validity column until `compute`."""

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    rows: list[Tensor]  # (n, 7) float32 each: dim, position, layer, resid_in, attn, mlp, valid
    overflow: Tensor  # () int64, sequences with more massive entries than candidates

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("rows", [], dist_reduce_fx="cat")
        self.add_state("overflow", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(
        self,
        block_inputs: Sequence[Tensor],
        attn_outputs: Sequence[Tensor],
        mlp_outputs: Sequence[Tensor],
        entries: tuple[Tensor, Tensor, Tensor],
    ) -> None:
        """`entries` = `massive_union(...)`: flat indices (B, K) to follow through every
        block, their validity (B, K), and which sequences overflowed K (B,)."""
        index, valid, overflow = entries
        dim, position = flat_location(index, block_inputs[0].shape[-1])
        rows = []
        for i, parts in enumerate(zip(block_inputs, attn_outputs, mlp_outputs, strict=True)):
            values = [t.detach().flatten(1).gather(1, index).float() for t in parts]
            columns = [dim.float(), position.float(), torch.full_like(values[0], i), *values, valid.float()]
            rows.append(torch.stack(columns, dim=-1).flatten(0, 1))
        self.rows.append(torch.cat(rows))
        self.overflow += overflow.sum()

    def compute(self) -> dict[str, Tensor]:
        return {"rows": _valid_rows(_rows(self.rows, 7)), "overflow": self.overflow}


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
        received_positions: int = 16,
    ) -> None:
        super().__init__()
        self.profiles = nn.ModuleDict({n: new_profile() for n in names})
        self.head_scores = nn.ModuleDict(
            {n: HeadScores(num_layers, num_heads, received_positions) for n in names} if head_scores else {}
        )
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
