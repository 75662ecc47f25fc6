"""What an edit variant does to a block output: zero the massive entries, set them to a
value, or zero as many random ordinary ones (the control). Fixed shapes, no host reads."""

from __future__ import annotations

import torch
from torch import Tensor

from lit_massive.analyses.block_stats import sequence_massive_mask


def zero_massive(x: Tensor, threshold: float, ratio: float) -> Tensor:
    """x (B, T, D) with every entry that meets the massive criterion set to 0."""
    return x.masked_fill(sequence_massive_mask(x, threshold, ratio).view_as(x), 0.0)


def zero_random(x: Tensor, threshold: float, ratio: float, seeds: list[int]) -> Tensor:
    """Control for `zero_massive`: in each sequence, zero as many entries as it has massive
    ones, drawn uniformly at random among its non-massive entries from a generator seeded
    with `seeds[b]` on x's device. Fixed shapes: each entry gets a float64 random key
    (massive ones never win), and the n smallest keys are chosen, n read on the device."""
    massive = sequence_massive_mask(x, threshold, ratio)  # (B, N)
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
    ).masked_fill_(massive, 2.0)
    nth = keys.sort(dim=1).values.gather(1, (n - 1).clamp(min=0)[:, None])  # the n-th smallest key
    chosen = (keys <= nth) & (n[:, None] > 0)
    return x.masked_fill(chosen.view_as(x), 0.0)


def set_entries(x: Tensor, positions: Tensor, dims: Tensor, values: Tensor) -> Tensor:
    """x (B, T, D) with x[:, positions[j], dims[j]] = values[j] in every sequence; x itself
    when there is nothing to set."""
    if positions.numel() == 0:
        return x
    out = x.clone()
    out[:, positions, dims] = values.to(x.dtype)
    return out
