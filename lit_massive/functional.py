"""The math of the layer profile, once, for the metric class and for direct use."""

from __future__ import annotations

import torch
from torch import Tensor


def sequence_profile(x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per sequence of a block output `x` (B, T, D): the k largest |x| over tokens x dims,
    their flat indices (position * D + dim), and the median |x| (the lower middle value,
    as `torch.median` defines it). Computed in float32 whatever the model dtype."""
    a = x.detach().flatten(1).float().abs()  # (B, T*D)
    top, idx = a.topk(k, dim=1)  # (B, k), sorted descending
    median = a.median(dim=1).values  # (B,)
    return top, idx, median


def top1_location(idx: Tensor, hidden_size: int) -> tuple[Tensor, Tensor]:
    """Split flat top-1 indices (B,) into (feature dim, token position)."""
    return idx % hidden_size, torch.div(idx, hidden_size, rounding_mode="floor")
