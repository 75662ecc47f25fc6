"""The math of the layer profile, once, for the metric class and for direct use."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NLL_CHUNK_LOGITS = 2**24  # logits per LM-head chunk: 64 MB in float32, whatever the vocabulary


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
    nonfinite: Tensor  # () int64: inf/NaN entries in the block output
    candidate_index: Tensor  # (B, K) flat indices of the K largest |x|
    candidate_value: Tensor  # (B, K) their signed values, float32
    massive: Tensor  # (B, K) bool: that candidate meets the massive criterion (finite rows only)
    overflow: Tensor  # (B,) bool: the (K + 1)-th largest |x| is massive too
    hidden_size: int  # D, to split flat indices


def block_stats(x: Tensor, k: int, candidates: int, threshold: float, ratio: float) -> BlockStats:
    """Statistics of a block output x (B, T, D) in float32 whatever the model dtype: one
    top-(max(k, K + 1)) and one median per sequence (`torch.median`: the lower middle value)."""
    signed = x.detach().flatten(1).float()  # (B, T*D)
    a = signed.abs()
    n = a.shape[1]
    cand = min(candidates, n)
    values, index = a.topk(min(max(k, cand + 1), n), dim=1)  # sorted descending
    median = a.median(dim=1).values
    finite = torch.isfinite(values[:, 0])  # inf and NaN sort above every finite value
    massive = massive_mask(values, median, threshold, ratio) & finite[:, None]
    return BlockStats(
        top=values[:, :k],
        top_index=index[:, :k],
        median=median,
        finite=finite,
        nonfinite=(~torch.isfinite(a)).sum(),
        candidate_index=index[:, :cand],
        candidate_value=signed.gather(1, index[:, :cand]),
        massive=massive[:, :cand],
        overflow=massive[:, cand] if values.shape[1] > cand else torch.zeros_like(finite),
        hidden_size=x.shape[-1],
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


def received_attention(probs: Tensor) -> Tensor:
    """What each key position receives, averaged over all query positions: (B, H, T_k).
    Column 0 is the first-token score; summing the columns of a window's massive tokens
    gives its massive-token score."""
    return probs.mean(dim=-2)


def massive_positions(stats: list[BlockStats], seq_len: int) -> Tensor:
    """(B, T) bool: the window's massive tokens, the positions where some block output meets
    the massive criterion (from each block's candidates; fixed shapes, no host read)."""
    hits = torch.zeros(stats[0].massive.shape[0], seq_len, dtype=torch.float32, device=stats[0].massive.device)
    for s in stats:
        position = torch.div(s.candidate_index, s.hidden_size, rounding_mode="floor")
        hits.scatter_add_(1, position, s.massive.float())
    return hits > 0


def mask_heads(x: Tensor, mask: Tensor) -> Tensor:
    """Multiply each head's slice of the concatenated head outputs x (B, T, H * hd) by
    mask (H,): a 0 prunes that head before the output projection."""
    shape = x.shape
    return (x.view(*shape[:-1], mask.numel(), -1) * mask.to(x.dtype)[:, None]).view(shape)


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


def massive_dims(x: Tensor, threshold: float, ratio: float) -> list[int]:
    """Feature dims holding a massive activation in one block output x (T, D)."""
    hit = sequence_massive_mask(x[None], threshold, ratio).view(x.shape)  # the text is one sequence
    return hit.any(dim=0).nonzero().flatten().tolist()
