"""Per-layer statistics of a block output, computed once per forward pass and shared by
every analysis (profile, locator, components, massive-token attention), and the paper's
massive criterion."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor


@dataclass
class BlockStats:
    """One block output's per-sequence statistics, computed once and shared by the layer
    profile, the locator and the components. Fixed shapes only, so no value is read back to
    the host: the massive entries of a sequence are among its K largest |values| (its
    candidates), marked by `massive`; `overflow` says a sequence had more than K."""

    top: Tensor  # (B, k) largest |x|, float32, descending
    top_index: Tensor  # (B, k) their flat indices (position * D + dim)
    median: Tensor  # (B,) lower median of |x|
    finite: Tensor  # (B,) bool: the sequence's block output holds no inf/NaN
    # () int64: inf/NaN entries among each sequence's K + 1 largest |values| (they sort
    # first), exact unless `nonfinite_capped` sequences had K + 1 of them (then a lower bound)
    nonfinite: Tensor
    nonfinite_capped: Tensor  # () int64
    candidate_index: Tensor  # (B, K) flat indices of the K largest |x|
    candidate_value: Tensor  # (B, K) their signed values, float32
    massive: Tensor  # (B, K) bool: that candidate meets the massive criterion (finite rows only)
    overflow: Tensor  # (B,) bool: the (K + 1)-th largest |x| is massive too
    n_embd: int  # D, to split flat indices


def block_stats(x: Tensor, k: int, candidates: int, threshold: float, ratio: float) -> BlockStats:
    """Statistics of a block output x (B, T, D) in float32 whatever the model dtype: one
    top-(max(k, K + 1)) and one median per sequence (`torch.median`: the lower middle value).
    inf/NaN entries are counted among the top values, where they sort first: no extra pass
    over the block output."""
    signed = x.detach().flatten(1).float()  # (B, T*D)
    a = signed.abs()
    n = a.shape[1]
    cand = min(candidates, n)
    values, index = a.topk(min(max(k, cand + 1), n), dim=1)  # sorted descending
    median = a.median(dim=1).values
    top_finite = torch.isfinite(values)  # inf and NaN sort above every finite value
    finite = top_finite[:, 0]
    massive = massive_mask(values, median, threshold, ratio) & finite[:, None]
    return BlockStats(
        top=values[:, :k],
        top_index=index[:, :k],
        median=median,
        finite=finite,
        nonfinite=(~top_finite).sum(),
        nonfinite_capped=(~top_finite[:, -1]).sum(),
        candidate_index=index[:, :cand],
        candidate_value=signed.gather(1, index[:, :cand]),
        massive=massive[:, :cand],
        overflow=massive[:, cand] if values.shape[1] > cand else torch.zeros_like(finite),
        n_embd=x.shape[-1],
    )


def massive_union(stats: list[BlockStats], candidates: int) -> tuple[Tensor, Tensor, Tensor]:
    """The flat indices that are massive in at least one block output, per sequence, each
    once, in K = `candidates` fixed slots: (index (B, K), valid (B, K), overflow (B,)).
    Invalid slots hold index 0. Sorting replaces `unique`, so no shape depends on the data."""
    index = torch.cat([s.candidate_index for s in stats], dim=1)  # (B, L * K_c)
    hit = torch.cat([s.massive for s in stats], dim=1)
    sentinel = torch.iinfo(index.dtype).max
    keys = torch.where(hit, index, sentinel).sort(dim=1).values  # massive first, duplicates adjacent
    first = (keys != sentinel) & torch.cat(
        [torch.ones_like(keys[:, :1], dtype=torch.bool), keys[:, 1:] != keys[:, :-1]], 1
    )
    rank = first.long().cumsum(dim=1) - 1
    slot = torch.where(first & (rank < candidates), rank, candidates)  # slot K collects the rest
    out = torch.full((index.shape[0], candidates + 1), sentinel, dtype=index.dtype, device=index.device)
    out = out.scatter(1, slot, keys)[:, :candidates]
    valid = out != sentinel
    overflow = (first.sum(dim=1) > candidates) | torch.stack([s.overflow for s in stats]).any(dim=0)
    return torch.where(valid, out, 0), valid, overflow


def massive_mask(a: Tensor, median: Tensor, threshold: float, ratio: float) -> Tensor:
    """The paper's criterion on |x| (B, N): above `threshold` and `ratio` x the sequence's median."""
    return (a > threshold) & (a > ratio * median[:, None])


def sequence_massive_mask(x: Tensor, threshold: float, ratio: float) -> Tensor:
    """Where x (B, T, D) meets the massive criterion against each sequence's own median: (B, T*D)."""
    a = x.detach().flatten(1).float().abs()
    return massive_mask(a, a.median(dim=1).values, threshold, ratio)


def flat_location(idx: Tensor, n_embd: int) -> tuple[Tensor, Tensor]:
    """Split flat indices into |x| flattened over (position, dim) into (feature dim, token
    position): the top-1's, or any massive entry's."""
    return idx % n_embd, torch.div(idx, n_embd, rounding_mode="floor")


def massive_positions(stats: list[BlockStats], seq_len: int) -> Tensor:
    """(B, T) bool: the window's massive tokens, the positions where some block output meets
    the massive criterion (from each block's candidates; fixed shapes, no host read)."""
    hits = torch.zeros(stats[0].massive.shape[0], seq_len, dtype=torch.float32, device=stats[0].massive.device)
    for s in stats:
        position = torch.div(s.candidate_index, s.n_embd, rounding_mode="floor")
        hits.scatter_add_(1, position, s.massive.float())
    return hits > 0


def massive_dims(x: Tensor, threshold: float, ratio: float) -> list[int]:
    """Feature dims holding a massive activation in one block output x (T, D)."""
    hit = sequence_massive_mask(x[None], threshold, ratio).view(x.shape)  # the text is one sequence
    return hit.any(dim=0).nonzero().flatten().tolist()


def stats_of(options: Mapping[str, Any]) -> Callable[[Tensor], BlockStats]:
    """`block_stats` with the run's options (``top_k``, ``massive_candidates``, the criterion)."""
    return partial(
        block_stats,
        k=options["top_k"],
        candidates=options["massive_candidates"],
        threshold=options["massive_threshold"],
        ratio=options["massive_ratio"],
    )
