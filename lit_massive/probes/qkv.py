"""Massive dims of queries, keys and values (Jin et al., arXiv 2502.01563): per window and
head, the L2 norm over the window's tokens of each dim of q, k and v as the attention
function receives them (after RoPE and q/k norms), and of each rotary pair of q and k.

A rotation leaves the norm of the pair it rotates unchanged: RoPE turns each pair
(x_a, x_b) of a query or key by an angle that depends on the position, so the pair's norm
over the tokens, sqrt(||x_a||^2 + ||x_b||^2), is that of the projection's output (times the
rotary embedding's `attention_scaling`, 1 unless the rope type scales). It is computed from
the per-dim norms, so the probe needs no knowledge of the layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lit_massive.models.families import DecoderLayout
from lit_massive.probes.attention import AttentionCall

# model types whose attention receives each rotary pair as neighbours (2j, 2j + 1): GPT-J
# and CodeGen rotate with `rotate_every_two`. Every supported family rotates halves
# (`rotate_half`: pair j is (j, j + rotary_dim / 2)); DeepSeek's `rope_interleave`
# de-interleaves before rotating, so its attention receives halves too
INTERLEAVED = frozenset({"gptj", "codegen"})


@dataclass
class QKVNorms:
    """One block's q, k and v, reduced inside its attention function: per window and head,
    the L2 norm over the window's tokens of each dim, float32. Keys and values per KV head
    (grouped-query attention: one tensor that its query group reads)."""

    query: Tensor  # (B, H, hd)
    key: Tensor  # (B, H_kv, hd)
    value: Tensor  # (B, H_kv, hd_v)


def dim_norms(x: Tensor) -> Tensor:
    """(B, H, T, d) -> (B, H, d) float32: each dim's L2 norm over the tokens."""
    return torch.linalg.vector_norm(x.float(), dim=2)


def qkv_norms(call: AttentionCall) -> QKVNorms:
    """The per-dim norms of one attention call: fixed shapes, no host read."""
    return QKVNorms(dim_norms(call.query), dim_norms(call.key), dim_norms(call.value))


def massive_dims(norms: Tensor, ratio: float, total: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Jin et al.'s criterion on per-dim (or per-pair) norms (..., n): which exceed `ratio`
    times their mean over the head's n entries (bool, (..., n)), and their share of the
    head's squared norm `total` (...,) (default: the sum of the squared `norms`). NaN norms
    are never massive; a head whose total is 0 or not finite has a NaN share."""
    massive = norms > ratio * norms.mean(dim=-1, keepdim=True)
    squared = norms.square()
    total = squared.sum(dim=-1) if total is None else total
    return massive, (squared * massive).sum(dim=-1) / total


@dataclass(frozen=True)
class RotaryPairs:
    """How RoPE pairs the dims of the queries and keys the attention function receives:
    the first `rotary_dim` dims of a head are rotated in pairs (the rest, under partial
    rotary, pass through unrotated), pair j by `inv_freq[l, j]` radians per position in layer l."""

    rotary_dim: int
    interleaved: bool  # pair j = dims (2j, 2j + 1); else (j, j + rotary_dim / 2) (`rotate_half`)
    inv_freq: Tensor  # (L, P) float64, P = rotary_dim / 2
    rope_parameters: list[dict[str, Any]]  # per layer: the config's rope parameters (type, theta, scaling)
    attention_scaling: list[float]  # per layer: the factor on cos and sin (and so on the rotated pairs' norms)

    @property
    def n_pairs(self) -> int:
        return self.rotary_dim // 2

    @property
    def layout(self) -> str:
        return "interleaved" if self.interleaved else "rotate_half"

    def dims(self) -> list[list[int]]:
        """Per pair j, its two dims [a, b]."""
        p = self.n_pairs
        return [[2 * j, 2 * j + 1] if self.interleaved else [j, j + p] for j in range(p)]

    def norms(self, dims: Tensor) -> Tensor:
        """Per-pair norms (..., P) from per-dim norms (..., hd): sqrt(||x_a||^2 + ||x_b||^2).
        Slices, not index tensors, so nothing is copied to the device."""
        r, p = self.rotary_dim, self.n_pairs
        a, b = (dims[..., 0:r:2], dims[..., 1:r:2]) if self.interleaved else (dims[..., :p], dims[..., p:r])
        return torch.sqrt(a.square() + b.square())


def rotary_pairs(layout: DecoderLayout) -> RotaryPairs | None:
    """The model's rotary pairs, from its own rotary embedding built afresh on the CPU from
    its config (the model may still be on the meta device): its inverse frequencies are what
    the model computes cos and sin from, rope scaling included. None for a model without a
    rotary embedding (learned positions: GPT-2, OPT). Rope types that recompute frequencies
    for long inputs (``dynamic``) are reported at their initial frequencies."""
    backbone = layout.backbone
    found = next((m for m in backbone.modules() if type(m).__name__.endswith("RotaryEmbedding")), None)
    if found is None:
        return None
    config = backbone.config
    with torch.device("cpu"):
        rotary = type(found)(config)
    kinds = getattr(config, "layer_types", None) or [None] * layout.n_layer
    parameters = getattr(config, "rope_parameters", None) or {}
    inv_freq, per_layer, scaling = [], [], []
    for kind in kinds:
        # layers of different types may rotate at different bases (Gemma 3: local and global)
        typed = kind is not None and hasattr(rotary, f"{kind}_inv_freq")
        prefix = f"{kind}_" if typed else ""
        inv_freq.append(getattr(rotary, f"{prefix}inv_freq").double())
        scaling.append(float(getattr(rotary, f"{prefix}attention_scaling", 1.0)))
        per_layer.append(dict(parameters.get(kind) or {}) if typed else dict(parameters))
    freqs = torch.stack(inv_freq)  # (L, P)
    return RotaryPairs(
        rotary_dim=2 * freqs.shape[1],
        interleaved=config.model_type in INTERLEAVED,
        inv_freq=freqs,
        rope_parameters=per_layer,
        attention_scaling=scaling,
    )
