"""The attention-function probe: the probabilities every head really uses, under any backend.

transformers 5 routes every supported family's attention through its attention-function
registry with the final query, key, mask and scaling; wrapping the registry entry of the
model's own backend sees them without changing the forward pass.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from transformers import masking_utils
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from lit_massive.models.families import DecoderLayout


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


AttentionFn = Callable[..., tuple]


@contextmanager
def attention_probe(layout: DecoderLayout, on_call: Callable[[int, Tensor], None]) -> Iterator[None]:
    """Call `on_call(i, probs)` with the attention probabilities (B, H, T, T) of block i,
    computed from what the model's attention function receives, then run that function.

    Every supported family calls `ALL_ATTENTION_FUNCTIONS.get_interface(impl, eager)` with
    the final query (after RoPE and q/k norms), the key (one per KV group), the mask it
    built (sliding windows included), `scaling` and `softcap`. Wrapping the registry entry
    of the model's own backend keeps that backend (sdpa, flash) for the forward pass and
    leaves masks untouched, so the probabilities are the ones the model uses. The entry is
    a local override on the registry, restored on exit like the hooks.
    """
    impl = layout.attn_implementation
    layer_of = {id(m): i for i, m in enumerate(layout.attn)}
    local = ALL_ATTENTION_FUNCTIONS._local_mapping  # overrides of this registry instance only
    had_local, previous = impl in local, local.get(impl)
    backend = ALL_ATTENTION_FUNCTIONS[impl] if impl in ALL_ATTENTION_FUNCTIONS else None

    def probe(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask, **kwargs) -> tuple:
        i = layer_of.get(id(module))
        if i is not None:
            scaling = kwargs.get("scaling")
            probs = attention_probs(
                query,
                key,
                query.shape[-1] ** -0.5 if scaling is None else scaling,
                attention_mask,
                softcap=kwargs.get("softcap"),
                sliding_window=kwargs.get("sliding_window"),
            )
            on_call(i, probs)
            del probs  # one block's (B, H, T, T) at a time
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
