"""What an edit variant does to a block output: zero the massive entries, set each to the
mean value of its dim, or zero as many random ordinary ones (the control), at every
position, at the first only or at the rest. Fixed shapes, no host reads: what an edit
changed is counted into a device tensor the caller reads after the pass."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lit_massive.errors import InputError
from lit_massive.probes.block_stats import sequence_massive_mask

POSITIONS = ("all", "first", "rest")  # every position; position 0 (BOS when there is one); every other
GROUPS = ("first", "rest")  # a mean edit's two groups of positions: index 0 is position 0
EDITED, UNMATCHED = 0, 1  # rows of an edit's (2,) count: entries it changed, massive ones it left (no mean)


class GroupMeans(NamedTuple):
    """One block's mean massive value per (group, dim), group 0 the first position and 1 the
    rest: (m,) tensors, one (group, dim) pair each."""

    groups: Tensor
    dims: Tensor
    values: Tensor
    width: int  # on the host: the largest dim + 1 (0 without any), checked against the block's


def selected_positions(n_positions: int, positions: str, device: torch.device) -> Tensor:
    """(T,) bool: the positions an edit touches (`POSITIONS`)."""
    t = torch.arange(n_positions, device=device)
    return t >= 0 if positions == "all" else t == 0 if positions == "first" else t > 0


def massive_entries(x: Tensor, threshold: float, ratio: float, positions: str = "all") -> Tensor:
    """(B, T, D) bool: the entries of x (B, T, D) that are massive in their own sequence (the
    criterion against that sequence's median over all positions), at the chosen positions."""
    mask = sequence_massive_mask(x, threshold, ratio).view_as(x)
    if positions == "all":
        return mask
    return mask & selected_positions(x.shape[1], positions, x.device)[None, :, None]


def _count(counts: Tensor | None, row: int, mask: Tensor) -> None:
    if counts is not None:
        counts[row] += mask.sum()  # stays on the device


def zero_massive(
    x: Tensor, threshold: float, ratio: float, positions: str = "all", counts: Tensor | None = None
) -> Tensor:
    """x (B, T, D) with every entry that meets the massive criterion, at `positions`, set to
    0; how many are added to `counts[EDITED]`."""
    mask = massive_entries(x, threshold, ratio, positions)
    _count(counts, EDITED, mask)
    return x.masked_fill(mask, 0.0)


def zero_random(
    x: Tensor,
    threshold: float,
    ratio: float,
    seeds: list[int],
    positions: str = "all",
    counts: Tensor | None = None,
) -> Tensor:
    """Control for `zero_massive`: in each sequence, zero as many entries as it has massive
    ones at `positions`, drawn uniformly at random among its non-massive entries at the same
    positions from a generator seeded with `seeds[b]` on x's device. Fixed shapes: each entry
    gets a float64 random key (2 where it may not be drawn), and the n smallest keys below 2
    are chosen, n read on the device."""
    massive = sequence_massive_mask(x, threshold, ratio)  # (B, N), N = T * D position-major
    barred = massive
    if positions != "all":
        outside = ~selected_positions(x.shape[1], positions, x.device).repeat_interleave(x.shape[2])
        massive, barred = massive & ~outside, massive | outside
    n = massive.sum(dim=1)  # (B,)
    keys = torch.stack(
        [
            torch.rand(
                massive.shape[1],
                generator=torch.Generator(x.device).manual_seed(seed),
                dtype=torch.float64,
                device=x.device,
            )
            for seed in seeds
        ]
    ).masked_fill_(barred, 2.0)
    nth = keys.sort(dim=1).values.gather(1, (n - 1).clamp(min=0)[:, None])  # the n-th smallest key
    chosen = (keys <= nth) & (keys < 2.0) & (n[:, None] > 0)
    _count(counts, EDITED, chosen)
    return x.masked_fill(chosen.view_as(x), 0.0)


def set_to_means(
    x: Tensor,
    threshold: float,
    ratio: float,
    means: GroupMeans,
    positions: str = "all",
    counts: Tensor | None = None,
) -> Tensor:
    """x (B, T, D) with each entry that is massive in its own sequence, at `positions`, set to
    the mean of its (first|rest, dim) group; a massive entry whose group has no mean is left
    as it is. Counts: `EDITED` the entries set, `UNMATCHED` the massive ones left."""
    n_positions, n_embd = x.shape[1], x.shape[2]
    if means.width > n_embd:  # a `from:` results.json of another model
        raise InputError(f"mean edit: a mean for dim {means.width - 1}, but the block output has {n_embd} dims")
    table = torch.zeros(len(GROUPS), n_embd, dtype=torch.float32, device=x.device)
    table = table.index_put((means.groups, means.dims), means.values)
    known = torch.zeros(len(GROUPS), n_embd, dtype=torch.bool, device=x.device)
    known = known.index_put((means.groups, means.dims), torch.ones_like(means.dims, dtype=torch.bool))
    group = (torch.arange(n_positions, device=x.device) > 0).long()  # (T,): 0 first, 1 rest
    mask = massive_entries(x, threshold, ratio, positions)
    matched = mask & known[group]  # (B, T, D)
    _count(counts, EDITED, matched)
    _count(counts, UNMATCHED, mask & ~matched)
    return torch.where(matched, table[group].to(x.dtype), x)


def massive_token_mask(x: Tensor, threshold: float, ratio: float) -> Tensor:
    """(B, T) bool: the tokens of x (B, T, D) with an entry massive in its own sequence (a
    `quantize` variant's ``keep: massive_tokens``, on the stream entering a block)."""
    return massive_entries(x, threshold, ratio).any(dim=-1)
