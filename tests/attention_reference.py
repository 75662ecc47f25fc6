"""Hand computations of the attention internals from eager attention, written without
project code: what each eager attention function receives (query, key, value, mask,
scaling, softcap) and the probabilities it returns, captured by wrapping the family's own
`eager_attention_forward`."""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager

import torch


@contextmanager
def eager_calls(model):
    """Record, per attention call of `model` (run with attn_implementation="eager"), the
    tensors its eager attention function receives and the weights it returns."""
    calls = []
    modules = {sys.modules[type(m).__module__] for m in model.modules()}
    modules = {mod for mod in modules if hasattr(mod, "eager_attention_forward")}
    originals = {mod: mod.eager_attention_forward for mod in modules}

    def wrap(original):
        def recording(module, query, key, value, attention_mask, *args, **kwargs):
            out, weights = original(module, query, key, value, attention_mask, *args, **kwargs)
            scaling = kwargs.get("scaling")
            calls.append(
                dict(
                    query=query, key=key, value=value, mask=attention_mask, weights=weights,
                    scaling=query.shape[-1] ** -0.5 if scaling is None else scaling, softcap=kwargs.get("softcap"),
                    sinks=getattr(module, "sinks", None),  # gpt-oss: a learned logit per head in the denominator
                )
            )  # fmt: skip
            return out, weights

        return recording

    for mod, original in originals.items():
        mod.eager_attention_forward = wrap(original)
    try:
        yield calls
    finally:
        for mod, original in originals.items():
            mod.eager_attention_forward = original


def _per_query_head(x, n_head):
    return x.repeat_interleave(n_head // x.shape[1], dim=1)


def internals(call, massive):
    """Per window and head (B, H) of one call, in float64: value_norm_first, value_norm_rest,
    head_output_norm, massive_update_norm, other_update_norm, massive_update_cosine (NaN
    where no query may attend to a massive token), first_token_logit_gap; `massive` (B, T)."""
    p = call["weights"].double()  # (B, H, T, T)
    b, h, t, _ = p.shape
    v = _per_query_head(call["value"].double(), h)
    k = _per_query_head(call["key"].double(), h)
    s = (call["query"].double() @ k.transpose(-1, -2)) * call["scaling"]
    if call["softcap"] is not None:
        s = torch.tanh(s / call["softcap"]) * call["softcap"]
    mask = call["mask"]
    i = torch.arange(t)
    allowed = (mask[..., :t, :t] > torch.finfo(mask.dtype).min / 2) if mask is not None else (i[None] <= i[:, None])
    allowed = allowed.expand(b, h, t, t)
    # the logits are right: with the mask (and a learned sink's logit) they give the model's own probabilities
    logits = s.masked_fill(~allowed, -math.inf)
    if call["sinks"] is not None:
        sink = call["sinks"].detach().double()[None, :, None, None].expand(b, h, t, 1)
        logits = torch.cat([logits, sink], dim=-1)
    torch.testing.assert_close(logits.softmax(-1)[..., :t], p, rtol=1e-4, atol=1e-6)
    norms = v.norm(dim=-1)
    o = p @ v
    on_massive = massive[:, None, None, :].double()
    u = (p * on_massive) @ v
    out = {
        "value_norm_first": norms[..., 0],
        "value_norm_rest": norms[..., 1:].mean(-1),
        "head_output_norm": o.norm(dim=-1).mean(-1),
        "massive_update_norm": u.norm(dim=-1).mean(-1),
        "other_update_norm": (o - u).norm(dim=-1).mean(-1),
    }
    cosine = torch.full((b, h), math.nan, dtype=torch.float64)
    gap = torch.full((b, h), math.nan, dtype=torch.float64)
    for w in range(b):
        for head in range(h):
            sees = (allowed[w, head] & massive[w][None, :]).any(-1)
            if sees.any():
                us = u[w, head][sees]
                mean = us.mean(0)
                cosine[w, head] = (us @ mean / (us.norm(dim=-1) * mean.norm())).mean()
            gaps = [
                s[w, head, q, 0] - s[w, head, q, 1:][allowed[w, head, q, 1:]].mean()
                for q in range(1, t)
                if allowed[w, head, q, 0]
            ]
            if gaps:
                gap[w, head] = torch.stack(gaps).mean()
    out["massive_update_cosine"] = cosine
    out["first_token_logit_gap"] = gap
    out.update(logit_factors(call["query"].double(), k, allowed))
    return out


def logit_factors(q, k, allowed):
    """Per window and head (B, H), in float64, over the queries i >= 1 that may attend to key
    0 (and to some key j >= 1): mean ||q_i||, mean cos(q_i, k_0), mean over i of the mean
    cos(q_i, k_j) over its keys j >= 1; ||k_0|| and the mean ||k_j|| over j >= 1. `k` is
    per query head (B, H, T, hd)."""
    b, h, t, _ = q.shape
    qn, kn = q.norm(dim=-1), k.norm(dim=-1)
    cos = (q @ k.transpose(-1, -2)) / (qn[..., None] * kn[..., None, :])  # (B, H, T, T)
    out = {
        name: torch.full((b, h), math.nan, dtype=torch.float64)
        for name in ("query_norm", "query_key_cos_first", "query_key_cos_rest")
    }
    for w in range(b):
        for head in range(h):
            rows = [i for i in range(1, t) if allowed[w, head, i, 0] and allowed[w, head, i, 1:].any()]
            if rows:
                out["query_norm"][w, head] = qn[w, head, rows].mean()
                out["query_key_cos_first"][w, head] = cos[w, head, rows, 0].mean()
                rest = [cos[w, head, i, 1:][allowed[w, head, i, 1:]].mean() for i in rows]
                out["query_key_cos_rest"][w, head] = torch.stack(rest).mean()
    out["key_norm_first"] = kn[..., 0]
    out["key_norm_rest"] = kn[..., 1:].mean(-1)
    return out


def key_attention(weights, allowed):
    """Gu et al.'s alpha_k (B, H, T) from eager attention weights (B, H, T, T) in float64: the
    attention key k receives summed over the queries that may attend to it, over their number."""
    return weights.double().sum(-2) / allowed.sum(-2)


def call_alpha(call):
    """Gu et al.'s alpha_k (B, H, T) of one eager call: its weights over the mask it received
    (causal when it got none)."""
    p = call["weights"]
    b, h, t, _ = p.shape
    mask = call["mask"]
    i = torch.arange(t)
    allowed = (mask[..., :t, :t] > torch.finfo(mask.dtype).min / 2) if mask is not None else (i[None] <= i[:, None])
    return key_attention(p, allowed.expand(b, h, t, t))


def gu_sink_rates(calls, epsilon=0.3, positions=16):
    """From one eager pass (`calls`, one per layer): per layer the share of (window, head) with
    alpha_0 > epsilon, the share over every layer, and per (layer, key k < positions) the share
    with alpha_k > epsilon, written from the paper's formula."""
    per_layer, per_key = [], []
    for call in calls:
        sinks = call_alpha(call) > epsilon
        per_layer.append(sinks[..., 0].double().mean().item())
        per_key.append(sinks[..., :positions].double().mean(dim=(0, 1)).tolist())
    return per_layer, sum(per_layer) / len(per_layer), per_key  # every layer has as many (window, head) pairs


def run_means(calls, massive):
    """Every figure as (L, H) means over windows (NaN windows left out), from one eager
    forward pass over all windows (`calls`: one per layer, in order; `massive[i]` (B, T):
    the massive tokens layer i's attention reads)."""
    per_layer = [internals(call, m) for call, m in zip(calls, massive, strict=True)]
    means = {}
    for key in per_layer[0]:
        x = torch.stack([layer[key] for layer in per_layer])  # (L, B, H)
        means[key] = x.nanmean(dim=1)
    return means


def massive_tokens(x, threshold=100.0, ratio=1000.0):
    """(B, T) bool: positions where the block output x (B, T, D) meets the paper's criterion
    against its window's median."""
    a = x.double().abs()
    return ((a > threshold) & (a > ratio * a.flatten(1).median(dim=1).values[:, None, None])).any(-1)


def entering_massive_tokens(block_outputs):
    """Per layer, (B, T) bool: the massive tokens of the stream that layer reads, the previous
    block's output (none for layer 0, which reads the embeddings)."""
    none = torch.zeros(block_outputs[0].shape[:2], dtype=torch.bool)
    return [none] + [massive_tokens(x) for x in block_outputs[:-1]]


def secondary_sink_overflow(calls, epsilon=0.3, slots=8):
    """(window, layer) pairs with more than `slots` keys k >= 1 that some head sinks on."""
    count = 0
    for call in calls:
        sinking = (call_alpha(call)[..., 1:] > epsilon).any(dim=1)  # (B, T - 1)
        count += int((sinking.sum(dim=1) > slots).sum())
    return count


def secondary_sink_rows(calls, input_ids, entering, epsilon=0.3):
    """Per (layer, token id): the (window, head) pairs whose alpha_k > epsilon at a key k >= 1
    holding that token, their summed alpha, the positions (a Counter) and the pairs in windows
    where that key's token is massive in the stream entering the layer (`entering[l]`, (B, T))."""
    from collections import Counter

    out = {}
    for layer, call in enumerate(calls):
        alpha = call_alpha(call)
        b, _, t = alpha.shape
        for w in range(b):
            for k in range(1, t):
                heads = alpha[w, :, k] > epsilon
                if heads.any():
                    row = out.setdefault((layer, int(input_ids[w, k])), [0, 0.0, Counter(), 0])
                    row[0] += int(heads.sum())
                    row[1] += float(alpha[w, :, k][heads].sum())
                    row[2][k] += 1
                    row[3] += int(heads.sum()) if entering[layer][w, k] else 0
    return out
