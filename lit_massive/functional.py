"""The math of the layer profile, once, for the metric class and for direct use."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NLL_CHUNK_LOGITS = 2**24  # logits per LM-head chunk: 64 MB in float32, whatever the vocabulary


def sequence_profile(x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per sequence of a block output `x` (B, T, D): |x| flattened to (B, T*D) in float32
    whatever the model dtype, the k largest values, their flat indices (position * D + dim),
    and the median (the lower middle value, as `torch.median` defines it)."""
    a = x.detach().flatten(1).float().abs()  # (B, T*D)
    top, idx = a.topk(k, dim=1)  # (B, k), sorted descending
    median = a.median(dim=1).values  # (B,)
    return a, top, idx, median


def massive_mask(a: Tensor, median: Tensor, threshold: float, ratio: float) -> Tensor:
    """The paper's criterion on |x| (B, N): above `threshold` and `ratio` x the sequence's median."""
    return (a > threshold) & (a > ratio * median[:, None])


def sequence_massive_mask(x: Tensor, threshold: float, ratio: float) -> Tensor:
    """Where x (B, T, D) meets the massive criterion against each sequence's own median: (B, T*D)."""
    a = x.detach().flatten(1).float().abs()
    return massive_mask(a, a.median(dim=1).values, threshold, ratio)


def zero_massive(x: Tensor, threshold: float, ratio: float) -> Tensor:
    """x (B, T, D) with every entry that meets the massive criterion set to 0."""
    return x.masked_fill(sequence_massive_mask(x, threshold, ratio).view_as(x), 0.0)


def zero_random(x: Tensor, threshold: float, ratio: float, generators: list[torch.Generator]) -> Tensor:
    """Control for `zero_massive`: in each sequence, zero as many entries as it has massive
    ones, drawn at random (from `generators[b]`) among its non-massive entries."""
    massive = sequence_massive_mask(x, threshold, ratio)
    out = x.clone()
    flat = out.view(x.shape[0], -1)
    for b, gen in enumerate(generators):
        n = int(massive[b].sum())
        chosen: list[int] = []
        while len(chosen) < n:
            for i in torch.randint(0, flat.shape[1], (2 * n,), generator=gen).tolist():
                if not massive[b, i] and i not in chosen and len(chosen) < n:
                    chosen.append(i)
        flat[b, chosen] = 0.0
    return out


def set_entries(x: Tensor, positions: Tensor, dims: Tensor, values: Tensor) -> Tensor:
    """x (B, T, D) with x[:, positions[j], dims[j]] = values[j] in every sequence."""
    out = x.clone()
    out[:, positions, dims] = values.to(x.dtype)
    return out


def flat_location(idx: Tensor, hidden_size: int) -> tuple[Tensor, Tensor]:
    """Split flat indices into |x| flattened over (position, dim) into (feature dim, token
    position): the top-1's, or any massive entry's."""
    return idx % hidden_size, torch.div(idx, hidden_size, rounding_mode="floor")


def attention_probs(
    q: Tensor,
    k: Tensor,
    scaling: float,
    mask: Tensor | None = None,
    softcap: float | None = None,
    sliding_window: int | None = None,
) -> Tensor:
    """The attention probabilities a model uses, recomputed in float32 from the final
    query (B, H, T, hd) and key (B, H_kv, T, hd) that its attention function receives:
    each query head reads its key group (grouped-query attention), logits are scaled and
    soft-capped as the model does, then masked by `mask` (boolean: True attends; float:
    added) or, when the backend got none, causally (within `sliding_window` if given).
    Returns (B, H, T, T); the one (B, H, T, T) buffer is reused in place."""
    b, h, t, hd = q.shape
    h_kv = k.shape[1]
    q = q.float().view(b, h_kv, h // h_kv, t, hd)  # (B, H_kv, group, T, hd)
    scores = (q * scaling) @ k.float()[:, :, None].transpose(-1, -2)  # scaled on the small side
    scores = scores.view(b, h, t, -1)  # (B, H, T, T)
    if softcap is not None:
        scores.div_(softcap).tanh_().mul_(softcap)
    if mask is None:
        i = torch.arange(t, device=q.device)
        allowed = i[None, :] <= i[:, None]
        if sliding_window is not None:
            allowed &= i[None, :] > i[:, None] - sliding_window
        scores.masked_fill_(~allowed, float("-inf"))
    elif mask.dtype == torch.bool:
        scores.masked_fill_(~mask[..., : scores.shape[-1]], float("-inf"))
    else:
        scores.add_(mask[..., : scores.shape[-1]].float())
    scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()  # softmax, in place
    return scores.div_(scores.sum(dim=-1, keepdim=True))


def first_token_attention(probs: Tensor) -> Tensor:
    """Attention probability on key position 0, averaged over query positions: (B, H)."""
    return probs[..., 0].mean(dim=-1)


def mask_heads(x: Tensor, mask: Tensor) -> Tensor:
    """Multiply each head's slice of the concatenated head outputs x (B, T, H * hd) by
    mask (H,): a 0 prunes that head before the output projection."""
    shape = x.shape
    return (x.view(*shape[:-1], mask.numel(), -1) * mask.to(x.dtype)[:, None]).view(shape)


NLL_CHUNK_LOGITS = 2**24  # logits per LM-head chunk: 64 MB in float32, whatever the vocabulary


def token_nll(
    hidden: Tensor,
    lm_head: nn.Linear,
    input_ids: Tensor,
    score_from: Tensor,
    softcap: float | None = None,
    chunk_logits: int = NLL_CHUNK_LOGITS,
) -> tuple[Tensor, Tensor, Tensor]:
    """Next-token NLL of the scored positions (>= score_from, per sequence) from the final
    hidden state (B, T, D): their float64 sum, their count, and how many were not finite
    (left out of the sum). The LM head runs on chunks of positions, so the (B, T, V) logits
    (and their float32 copy) never exist at once: Llama 3's 128k or Gemma's 256k vocabulary
    costs one chunk. `softcap` is the family's final-logit softcapping (Gemma 2). Cross-entropy
    is log-softmax based, in float32 whatever the logits dtype; the last position has no target."""
    b, t = input_ids.shape
    position = torch.arange(1, t, device=input_ids.device)  # target positions
    scored = position[None, :] >= score_from[:, None]  # (B, T-1)
    total = torch.zeros((), dtype=torch.float64, device=input_ids.device)
    nonfinite = torch.zeros((), dtype=torch.int64, device=input_ids.device)
    step = max(1, chunk_logits // (b * lm_head.out_features))
    for start in range(0, t - 1, step):
        end = min(start + step, t - 1)
        logits = lm_head(hidden[:, start:end])  # (B, c, V)
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        nll = F.cross_entropy(
            logits.float().flatten(0, 1), input_ids[:, start + 1 : end + 1].flatten(), reduction="none"
        ).view(b, -1)
        keep = scored[:, start:end]
        finite = torch.isfinite(nll)
        total += torch.where(keep & finite, nll, 0.0).sum(dtype=torch.float64)
        nonfinite += (keep & ~finite).sum()
    return total, scored.sum(), nonfinite


def massive_entries(block_outputs: list[Tensor], threshold: float, ratio: float) -> Tensor:
    """(sequence, dim, position) triples that meet the massive criterion in at least one
    block output, each once: (m, 3) int64."""
    found = []
    for x in block_outputs:
        seq, flat = sequence_massive_mask(x, threshold, ratio).nonzero(as_tuple=True)
        found.append(torch.stack([seq, flat % x.shape[2], flat // x.shape[2]], 1))
    return torch.cat(found).unique(dim=0)


def massive_dims(x: Tensor, threshold: float, ratio: float) -> list[int]:
    """Feature dims holding a massive activation in one block output x (T, D)."""
    hit = sequence_massive_mask(x[None], threshold, ratio).view(x.shape)  # the text is one sequence
    return hit.any(dim=0).nonzero().flatten().tolist()
