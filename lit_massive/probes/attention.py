"""The attention-function probe: the probabilities every head really uses, under any backend,
and what each head does with them (value norms, outputs, logits), one block at a time.

transformers 5 routes every supported family's attention through its attention-function
registry with the final query, key, value, mask and scaling; wrapping the registry entry of
the model's own backend sees them without changing the forward pass.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import masking_utils
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from lit_massive.models.families import DecoderLayout


@dataclass
class AttentionCall:
    """What one block's attention function receives: query (B, H, T, hd) after RoPE and q/k
    norms, key and value (B, H_kv, T, hd), the mask the model built (boolean: True attends;
    float: added; None: causal, within `sliding_window` if given), scaling and softcap, and
    a learned sink logit per query head (gpt-oss: (H,), in every row's softmax denominator
    and attending to nothing; None for the other families)."""

    query: Tensor
    key: Tensor
    value: Tensor
    mask: Tensor | None
    scaling: float
    softcap: float | None = None
    sliding_window: int | None = None
    sinks: Tensor | None = None

    @property
    def group(self) -> int:
        """Query heads per KV head (grouped-query attention)."""
        return self.query.shape[1] // self.key.shape[1]

    def scaled_query(self, rows: slice | None = None) -> Tensor:
        """The query rows in float32 times `scaling` (scaled on the small side), laid out
        (B, H_kv, group, n, hd) contiguous in one pass, so a matmul copies neither side."""
        q = self.query if rows is None else self.query[:, :, rows]
        b, h, n, hd = q.shape
        grouped = q.float().view(b, self.key.shape[1], self.group, n, hd)
        out = torch.empty(grouped.shape, device=grouped.device, dtype=torch.float32)  # whatever the default dtype
        return torch.mul(grouped, self.scaling, out=out)

    def logits(self, keys: Tensor | None = None, rows: slice | None = None, query: Tensor | None = None) -> Tensor:
        """s_ij in float32: scaled and soft-capped as the model does, before the mask:
        (B, H, T, T), or only the query `rows` (B, H, n, T), against all keys or against
        `keys` (B, H_kv, M, hd) only (B, H, ., M); `query`: those rows' `scaled_query`, if made."""
        q = self.scaled_query(rows) if query is None else query
        b, h_kv, group, n, hd = q.shape
        k = self.key if keys is None else keys
        # each KV head's query group as one matrix: one (group x n, hd) @ (hd, M) product per KV head
        scores = (q.view(b, h_kv, group * n, hd) @ k.float().transpose(-1, -2)).view(b, h_kv * group, n, -1)
        if self.softcap is not None:
            scores.div_(self.softcap).tanh_().mul_(self.softcap)
        return scores

    @property
    def plain_causal(self) -> bool:
        """Whether each query i attends to exactly the keys j <= i, with logits linear in the
        keys (no mask tensor, no sliding window, no softcap): then a sum of logits over the
        keys a query sees is the query times a running sum of keys (`LogitGap`)."""
        return self.mask is None and self.sliding_window is None and self.softcap is None

    def allowed(self, positions: Tensor | None = None, rows: slice | None = None) -> Tensor:
        """Which keys each query may attend to, as the model's mask says: (B or 1, 1 or H,
        T, T) bool, for the query `rows` only (., ., n, T), or at key `positions` (B, M)
        only (B, 1 or H, T, M)."""
        t, t_k, device = self.query.shape[2], self.key.shape[2], self.query.device
        rows = slice(0, t) if rows is None else rows
        if self.mask is None:
            i = torch.arange(rows.start, rows.stop, device=device)[:, None]  # (n, 1)
            j = torch.arange(t_k, device=device)[None, :] if positions is None else positions[:, None, None, :]
            allowed = j <= i
            if self.sliding_window is not None:
                allowed &= j > i - self.sliding_window
            return allowed if positions is not None else allowed[None, None]
        mask = self.mask[..., rows, :t_k]
        allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
        if positions is None:
            return allowed
        allowed = allowed.expand(positions.shape[0], *allowed.shape[1:])
        index = positions[:, None, None, :].expand(-1, allowed.shape[1], allowed.shape[2], -1)
        return allowed.gather(-1, index)

    def causal_bias(self, rows: slice) -> Tensor:
        """(1, 1, n, T) float32: -inf at the keys after each query of `rows`, 0 elsewhere."""
        n, t_k = rows.stop - rows.start, self.key.shape[2]
        bias = torch.full((n, t_k), float("-inf"), device=self.query.device, dtype=torch.float32)
        return bias.triu_(rows.start + 1)[None, None]

    def row_tiles(self, tile: int | None) -> list[slice]:
        """The query rows in tiles of at most `tile` (None: one tile), so that no more than
        (B, H, tile, T) scores exist at once."""
        t = self.query.shape[2]
        tile = t if tile is None else tile
        return [slice(a, min(a + tile, t)) for a in range(0, t, tile)]


def masked_softmax_(
    scores: Tensor, call: AttentionCall, rows: slice | None = None, with_lse: bool = True
) -> tuple[Tensor, Tensor | None]:
    """Mask `scores` (B, H, T, T), or those of the query `rows`, as `call`'s model does and
    softmax them in place: returns the probabilities (the same buffer) and, `with_lse`, each
    row's log-sum-exp (B, H, n), with which any probability can be recomputed from its logit
    (None without). One fused softmax, not five passes over the buffer: on a CPU each pass is
    a parallel region, which on a shared machine can wait milliseconds for its threads."""
    r = slice(0, call.query.shape[2]) if rows is None else rows
    if call.sinks is not None:  # the sink logit joins every row's denominator
        return _softmax_with_sinks_(_masked_(scores, call, r, rows), call.sinks.float())
    return _fused_softmax_(_masked_(scores, call, r, rows), with_lse)


def _masked_(scores: Tensor, call: AttentionCall, r: slice, rows: slice | None) -> Tensor:
    """`scores` of the query rows `r` with -inf (or the model's additive mask) where a query
    may not attend, in place."""
    if call.mask is not None and call.mask.dtype != torch.bool:
        scores.add_(call.mask[..., r, : scores.shape[-1]].float())
    elif call.mask is None and call.sliding_window is None:
        # causal: the keys after each query zeroed, then -inf added there, which is filling them
        # with -inf (even where a score is not finite) in two vectorised passes; masked_fill_'s
        # one pass takes four times as long on a CPU
        scores.tril_(r.start).add_(call.causal_bias(r))
    else:
        scores.masked_fill_(~call.allowed(rows=rows), float("-inf"))
    return scores


def _fused_softmax_(scores: Tensor, with_lse: bool) -> tuple[Tensor, Tensor | None]:
    """Softmax of masked `scores` over the keys in place, with each row's log-sum-exp."""
    top = scores.amax(dim=-1) if with_lse else None
    # in place: the tile's scores are its largest buffer (torch's last-dimension softmax
    # kernels finish a row's max and sum before writing it, each element where it was read)
    probs = torch.softmax(scores, -1, out=scores)
    # the largest probability is exp(0) / sum: log-sum-exp = max - log(largest probability)
    return probs, None if top is None else top.sub_(probs.amax(dim=-1).log_())


def _softmax_with_sinks_(scores: Tensor, sinks: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax of masked `scores` (B, H, n, T) over the keys and a sink logit per head
    (`sinks`, (H,)) in place, as gpt-oss computes it: p_ij = exp(s_ij) / (sum_j exp(s_ij) +
    exp(sink)); the sink's own share, exp(sink - lse), is what the keys do not get. Returns
    the keys' probabilities and each row's log-sum-exp, the sink included."""
    sink = sinks[None, :, None]  # (1, H, 1)
    top = torch.maximum(scores.amax(dim=-1), sink)
    scores.sub_(top[..., None]).exp_()
    total = scores.sum(dim=-1).add_((sink - top).exp())
    return scores.div_(total[..., None]), top.add_(total.log())


def attention_probs(
    q: Tensor,
    k: Tensor,
    scaling: float,
    mask: Tensor | None = None,
    softcap: float | None = None,
    sliding_window: int | None = None,
    sinks: Tensor | None = None,
) -> Tensor:
    """The attention probabilities a model uses, recomputed in float32 from the final
    query (B, H, T, hd) and key (B, H_kv, T, hd) that its attention function receives:
    each query head reads its key group (grouped-query attention), logits are scaled and
    soft-capped as the model does, then masked by `mask` (boolean: True attends; float:
    added) or, when the backend got none, causally (within `sliding_window` if given).
    Returns (B, H, T, T); the one (B, H, T, T) buffer is reused in place."""
    call = AttentionCall(q, k, k, mask, scaling, softcap, sliding_window, sinks)
    return masked_softmax_(call.logits(), call)[0]


def received_attention(probs: Tensor) -> Tensor:
    """What each key position receives, averaged over all query positions: (B, H, T_k).
    Column 0 is the first-token score; summing the columns of a window's massive tokens
    gives its massive-token score."""
    return probs.mean(dim=-2)


def received_in_tiles(call: AttentionCall, tile: int | None = None) -> Tensor:
    """`received_attention` of `call`'s probabilities, computed `tile` query rows at a time:
    (B, H, T_k), exact, with at most (B, H, tile, T) scores alive."""
    received = None
    for rows in call.row_tiles(tile):
        probs, _ = masked_softmax_(call.logits(rows=rows), call, rows, with_lse=False)
        part = probs.sum(dim=-2)
        received = part if received is None else received.add_(part)
        del probs
    return received.div_(call.query.shape[2])


def queries_per_key(call: AttentionCall, tile: int | None = None) -> Tensor:
    """How many queries may attend to each key, as the model's mask says: (B or 1, 1 or H,
    T_k) float32, the denominator of Gu et al.'s per-key attention alpha_k (arXiv 2410.10781).
    Causal, within `sliding_window` if any, when the call has no mask tensor (T - k, or
    min(T, k + W) - k); else counted from the mask, `tile` query rows at a time."""
    t, t_k, device = call.query.shape[2], call.key.shape[2], call.query.device
    if call.mask is None:
        k = torch.arange(t_k, device=device)
        last = torch.full_like(k, t) if call.sliding_window is None else (k + call.sliding_window).clamp(max=t)
        return (last - k).clamp(min=0).float()[None, None]
    count = None
    for rows in call.row_tiles(tile):
        part = call.allowed(rows=rows).sum(dim=-2, dtype=torch.float32)
        count = part if count is None else count.add_(part)
    return count


def per_query_head(x: Tensor, group: int) -> Tensor:
    """A KV-head tensor (B, H_kv, ...) repeated for the query heads that share it: (B, H, ...)."""
    return x.repeat_interleave(group, dim=1) if group > 1 else x


@dataclass
class HeadRecord:
    """One block's attention, reduced inside its attention function, per window and query
    head (B, H) unless noted. With `keep_call`, also what a decomposition by the massive
    tokens needs: the call and each row's log-sum-exp, from which the probabilities on any
    keys are recomputed, and the outputs; the block's hook releases them once its reducers
    have run (`Probed.release`), so nothing of size T x D is kept past the block."""

    received: Tensor  # (B, H, T): what each key receives, mean over queries
    value_norm_first: Tensor  # ||v_0||
    value_norm_rest: Tensor  # mean over j >= 1 of ||v_j|| (NaN for a 1-token window)
    output_norm: Tensor  # mean over queries i of ||o_i||, o_i = sum_j p_ij v_j
    logit_gap: Tensor  # mean over queries i >= 1 that may attend to key 0 of s_i0 - mean_j s_ij
    # the first-token logit s_i0 = scaling * ||q_i|| ||k_0|| cos(q_i, k_0) taken apart (`LogitFactors`)
    query_norm: Tensor  # mean ||q_i|| over the queries i >= 1 that may attend to key 0
    key_norm_first: Tensor  # ||k_0||
    key_norm_rest: Tensor  # mean over j >= 1 of ||k_j|| (NaN for a 1-token window)
    cos_first: Tensor  # mean cos(q_i, k_0) over those queries
    cos_rest: Tensor  # over those queries, mean of the mean cos(q_i, k_j) over the keys j >= 1 query i may attend to
    call: AttentionCall | None = None
    lse: Tensor | None = None  # (B, H, T) float32
    output: Tensor | None = None  # (B, H, T, hd) float32: o_i, before the output projection


def first_token_logit_gap_(scores: Tensor, allowed: Tensor, first_row: int = 0) -> tuple[Tensor, Tensor]:
    """Per window and head, over the queries i >= 1 (of these rows, the first being query
    `first_row`) that may attend to key 0: the sum of s_i0 minus the mean logit over the
    other keys query i may attend to, and how many queries that is. `scores` (B, H, n, T)
    is unmasked; `allowed` broadcasts to it. Sums in place (the keys a query may not attend
    to are set to 0): mask `scores` afterwards."""
    first = scores[..., 0].clone()  # (B, H, n): s_i0
    rows = torch.arange(first_row, first_row + scores.shape[-2], device=scores.device) >= 1
    n_other = allowed[..., 1:].sum(-1)  # the other keys each query sees (>= 1 when i >= 1, causal)
    seen = allowed[..., 0] & (n_other > 0) & rows
    total = scores.masked_fill_(~allowed, 0.0).sum(-1)
    gap = torch.where(seen, first - (total - first) / n_other.clamp(min=1), 0.0)
    return gap.sum(-1), seen.sum(-1)  # (B, H), (B or 1, 1 or H)


class LogitGap:
    """`first_token_logit_gap_` summed over tiles of query rows. For a `plain_causal` call
    the sum of query i's logits over keys 0..i is q_i . (k_0 + ... + k_i), from running key
    sums carried from tile to tile: (n, hd) numbers per head instead of a mask and two
    passes over the tile's (n, T) scores, which are left untouched."""

    def __init__(self, call: AttentionCall) -> None:
        self.call, self.carry = call, None  # carry: the sum of the keys before the tile (B, H_kv, 1, hd)
        self.sum: Tensor | float = 0.0
        self.queries: Tensor | int = 0

    def add(self, scores: Tensor, query: Tensor, rows: slice) -> None:
        """One tile: its unmasked `scores` (B, H, n, T) and `query`, the rows' `scaled_query`."""
        call = self.call
        if not call.plain_causal:
            part_sum, part_count = first_token_logit_gap_(scores, call.allowed(rows=rows), rows.start)
        else:
            keys = call.key[:, :, rows].float().cumsum(dim=2)  # (B, H_kv, n, hd): keys 0..i of the tile
            if self.carry is not None:
                keys += self.carry
            self.carry = keys[:, :, -1:]
            sums = (query * keys[:, :, None]).sum(-1).flatten(1, 2)  # (B, H, n): sum_{j <= i} s_ij
            first = scores[..., 0]  # (B, H, n): s_i0
            i = torch.arange(rows.start, rows.stop, device=scores.device)
            gap = torch.where(i >= 1, first - (sums - first) / i.clamp(min=1), 0.0)  # over keys 1..i
            part_sum, part_count = gap.sum(-1), max(rows.stop - max(rows.start, 1), 0)
        self.sum, self.queries = self.sum + part_sum, self.queries + part_count

    def mean(self) -> Tensor:
        """(B, H), or broadcastable to it: the mean gap over the queries i >= 1 that see key 0."""
        return self.sum / self.queries


class LogitFactors:
    """The factors of the first-token logit s_i0 = scaling * ||q_i|| ||k_0|| cos(q_i, k_0)
    (before any softcap), summed over tiles of query rows: whether a sink comes from the key's
    norm or from its direction (Gu et al. section 3). Over the queries i >= 1 that may attend
    to key 0 (the logit gap's queries): ||q_i||, cos(q_i, k_0) and the mean cos(q_i, k_j) over
    the keys j >= 1 query i may attend to; a `plain_causal` call sums the last from running
    sums of the unit keys, any other from a (n, T) tile of cosines under the mask."""

    def __init__(self, call: AttentionCall) -> None:
        self.call = call
        key = call.key.float()  # (B, H_kv, T, hd)
        self.key_norm = key.norm(dim=-1)  # (B, H_kv, T)
        self.unit_key = key / self.key_norm.clamp_min(1e-30)[..., None]
        self.carry = None  # plain causal: the sum of the unit keys 1.. before the tile (B, H_kv, 1, hd)
        self.sums: list[Tensor | float] = [0.0, 0.0, 0.0]  # ||q_i||, cos(q_i, k_0), mean_j cos(q_i, k_j)
        self.queries: Tensor | float = 0.0  # (B or 1, 1 or H)

    def add(self, rows: slice) -> None:
        """One tile of query rows."""
        call, (b, h_kv) = self.call, self.key_norm.shape[:2]
        q = call.query[:, :, rows].float()  # (B, H, n, hd)
        n = q.shape[2]
        q_norm = q.norm(dim=-1)  # (B, H, n)
        unit_q = (q / q_norm.clamp_min(1e-30)[..., None]).reshape(b, h_kv, call.group * n, -1)
        cos_first = (unit_q @ self.unit_key[:, :, :1].transpose(-1, -2)).reshape(b, -1, n)  # (B, H, n)
        i = torch.arange(rows.start, rows.stop, device=q.device)
        if call.plain_causal:
            keys = self.unit_key[:, :, rows].cumsum(dim=2)  # unit keys up to each query of the tile
            if self.carry is not None:
                keys += self.carry
            self.carry = keys[:, :, -1:]
            rest = keys - self.unit_key[:, :, :1]  # keys 1..i
            per_head = unit_q.reshape(b, h_kv, call.group, n, -1) * rest[:, :, None]
            cos_rest = per_head.sum(-1).reshape(b, -1, n) / i.clamp(min=1)  # mean over keys 1..i
            counted = (i >= 1)[None, None]  # (1, 1, n)
        else:
            allowed = call.allowed(rows=rows)  # (B or 1, 1 or H, n, T)
            cosines = (unit_q @ self.unit_key.transpose(-1, -2)).reshape(b, -1, n, self.key_norm.shape[-1])
            later = allowed.clone()
            later[..., 0] = False
            cos_rest = torch.where(later, cosines, 0.0).sum(-1) / later.sum(-1).clamp(min=1)
            counted = allowed[..., 0] & (i >= 1) & later.any(-1)  # (B or 1, 1 or H, n)
        for k, value in enumerate((q_norm, cos_first, cos_rest)):
            self.sums[k] = self.sums[k] + torch.where(counted, value, 0.0).sum(-1)
        self.queries = self.queries + counted.sum(-1)

    def record(self) -> dict[str, Tensor]:
        """The `HeadRecord` fields, per window and head (B, H); NaN where no query counted."""
        b, h = self.call.query.shape[:2]
        group = self.call.group
        means = [(total / self.queries).expand(b, h) for total in self.sums]
        key_norm = per_query_head(self.key_norm, group)  # (B, H, T)
        return {
            "query_norm": means[0],
            "key_norm_first": key_norm[..., 0],
            "key_norm_rest": key_norm[..., 1:].mean(-1),
            "cos_first": means[1],
            "cos_rest": means[2],
        }


def _place(buffer: Tensor | None, rows: slice, part: Tensor | None) -> Tensor | None:
    """`part` (B, H, n, ...) as the query `rows` of `buffer`; `part` itself without a buffer
    (one tile: no copy)."""
    if buffer is None:
        return part
    buffer[:, :, rows] = part
    return buffer


def head_record(call: AttentionCall, tile: int | None = None, keep_call: bool = True) -> HeadRecord:
    """Everything per head of one block, `tile` query rows at a time (None: all at once):
    their float32 scores give the logit gap, then the probabilities in place, then the rows'
    outputs and log-sum-exps and their part of what each key receives. Exact; at most
    (B, H, tile, T) scores alive. `keep_call`: the record keeps the call, outputs and
    log-sum-exps (`HeadRecord`)."""
    b, h, t, hd = call.query.shape
    value = call.value.float().contiguous()  # (B, H_kv, T, hd_v): read by every tile
    h_kv, device, tiles = value.shape[1], value.device, call.row_tiles(tile)
    output = lse = None
    if len(tiles) > 1:  # float32 whatever the default dtype (Lightning's 16-true and bf16-true change it)
        output = torch.empty(b, h, t, value.shape[-1], device=device, dtype=torch.float32)
        lse = torch.empty(b, h, t, device=device, dtype=torch.float32) if keep_call else None
    received, gap, factors = None, LogitGap(call), LogitFactors(call)
    for rows in tiles:
        factors.add(rows)
        query = call.scaled_query(rows)
        scores = call.logits(rows=rows, query=query)
        gap.add(scores, query, rows)
        del query
        probs, rows_lse = masked_softmax_(scores, call, rows, with_lse=keep_call)
        n = probs.shape[2]
        # each KV head's query group as one matrix: no copy of the values per query head
        rows_output = (probs.view(b, h_kv, call.group * n, -1) @ value).view(b, h, n, -1)
        output, lse = _place(output, rows, rows_output), _place(lse, rows, rows_lse)
        part = probs.sum(dim=-2)
        received = part if received is None else received.add_(part)
        del scores, probs
    value_norm = per_query_head(value.norm(dim=-1), call.group)  # (B, H, T)
    return HeadRecord(
        received=received.div_(t),
        value_norm_first=value_norm[..., 0],
        value_norm_rest=value_norm[..., 1:].mean(-1),
        output_norm=output.norm(dim=-1).mean(-1),
        logit_gap=gap.mean().expand(b, h),
        **factors.record(),
        **({"call": call, "lse": lse, "output": output} if keep_call else {}),
    )


AttentionFn = Callable[..., tuple]


def learned_sinks(module: nn.Module, kwargs: dict) -> Tensor | None:
    """The learned sink logits (H,) an attention function gets (gpt-oss passes its
    `self_attn.sinks` as `s_aux`; its eager function reads the module's), detached; None."""
    sinks = kwargs.get("s_aux")
    if sinks is None:
        sinks = getattr(module, "sinks", None)
    return sinks.detach() if isinstance(sinks, Tensor) else None


@contextmanager
def attention_probe(
    layout: DecoderLayout,
    on_call: Callable[[int, AttentionCall], None] | None,
    qk_keep: dict[int, tuple[Tensor, Tensor]] | None = None,
) -> Iterator[None]:
    """Call `on_call(i, call)` with what block i's attention function receives
    (`AttentionCall`: final query, key, value, mask, scaling, softcap), then run that function.
    With `qk_keep`, block i's query and key are first multiplied by its (H, hd) and (H_kv, hd)
    masks (a variant that zeroes q/k dims, `variants.qk_dims`): `on_call` and the function
    both see the edited ones.

    Every supported family calls `ALL_ATTENTION_FUNCTIONS.get_interface(impl, eager)` with
    the final query (after RoPE and q/k norms), the key and value (one per KV group), the
    mask it built (sliding windows included), `scaling` and `softcap`. Wrapping the registry
    entry of the model's own backend keeps that backend (sdpa, flash) for the forward pass
    and leaves masks untouched, so what `on_call` recomputes is what the model uses. The
    entry is a local override on the registry, restored on exit like the hooks.
    """
    impl = layout.attn_implementation
    layer_of = {id(m): i for i, m in enumerate(layout.attn)}
    local = ALL_ATTENTION_FUNCTIONS._local_mapping  # overrides of this registry instance only
    had_local, previous = impl in local, local.get(impl)
    backend = ALL_ATTENTION_FUNCTIONS[impl] if impl in ALL_ATTENTION_FUNCTIONS else None

    def probe(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask, **kwargs) -> tuple:
        i = layer_of.get(id(module))
        if i is not None and qk_keep and i in qk_keep:
            keep_q, keep_k = qk_keep[i]
            query = query * keep_q[None, :, None, :].to(query.dtype)
            key = key * keep_k[None, :, None, :].to(key.dtype)
        if i is not None and on_call is not None:
            scaling = kwargs.get("scaling")
            call = AttentionCall(
                query,
                key,
                value,
                attention_mask,
                query.shape[-1] ** -0.5 if scaling is None else scaling,
                softcap=kwargs.get("softcap"),
                sliding_window=kwargs.get("sliding_window"),
                sinks=learned_sinks(module, kwargs),
            )
            # float32 as promised: under autocast (bf16-mixed) a matmul would run in bfloat16
            with torch.autocast(query.device.type, enabled=False):
                on_call(i, call)
        # "eager" is no registry entry: it is the family's own function, the call's default
        fn = backend or sys.modules[type(module).__module__].eager_attention_forward
        return fn(module, query, key, value, attention_mask, **kwargs)

    ALL_ATTENTION_FUNCTIONS[impl] = probe
    try:
        yield
    finally:
        if had_local:
            local[impl] = previous
        else:
            del local[impl]


@contextmanager
def unpacked_windows() -> Iterator[None]:
    """Tell transformers' mask builder that no window packs several sequences (ours never
    do: positions run 0..T-1 in every row). Without this it checks the position ids on every
    forward pass with a value read back to the host, which on a GPU waits for the device."""
    check = getattr(masking_utils, "find_packed_sequence_indices", None)
    if check is None:  # a transformers without the check
        yield
        return
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = check
