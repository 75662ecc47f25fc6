"""The math of the layer profile, once, for the metric class and for direct use."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


def first_token_attention(q: Tensor, k: Tensor, scaling: float) -> Tensor:
    """Causal softmax attention probability on key position 0, averaged over query
    positions: (B, H). Recomputed from q and k in float32, so it does not depend on the
    attention backend (sdpa returns no probabilities)."""
    q, k = q.float(), k.float()
    scores = (q @ k.transpose(-1, -2)) * scaling  # (B, H, T, T)
    t = scores.shape[-1]
    future = torch.ones(t, t, dtype=torch.bool, device=scores.device).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    p0 = (scores[..., 0] - scores.logsumexp(dim=-1)).exp()  # (B, H, T)
    return p0.mean(dim=-1)


def mask_heads(x: Tensor, mask: Tensor) -> Tensor:
    """Multiply each head's slice of the concatenated head outputs x (B, T, H * hd) by
    mask (H,): a 0 prunes that head before the output projection."""
    shape = x.shape
    return (x.view(*shape[:-1], mask.numel(), -1) * mask.to(x.dtype)[:, None]).view(shape)


def token_nll(logits: Tensor, input_ids: Tensor, score_from: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Next-token NLL of the scored positions (>= score_from, per sequence): their float64
    sum, their count, and how many were not finite (those are left out of the sum).
    Cross-entropy is log-softmax based, in float32 whatever the logits dtype."""
    b, t, v = logits.shape
    nll = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, v), input_ids[:, 1:].reshape(-1), reduction="none"
    )
    nll = nll.view(b, t - 1)
    position = torch.arange(1, t, device=logits.device)
    scored = position[None, :] >= score_from[:, None]  # (B, T-1)
    finite = torch.isfinite(nll)
    total = torch.where(scored & finite, nll, 0.0).sum(dtype=torch.float64)
    return total, scored.sum(), (scored & ~finite).sum()
