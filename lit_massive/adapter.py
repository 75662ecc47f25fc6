"""Where a decoder family keeps its parts.

Everything that depends on the model's module layout lives here, so metrics, probes and
the LightningModule never name `transformer.h` or `attn.c_proj` themselves. Adding a family
means adding one function to `_LAYOUTS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from lit_massive.errors import InputError


@dataclass(frozen=True)
class DecoderLayout:
    """The parts of a decoder-only LM that the probes need."""

    backbone: nn.Module  # runs embeddings + blocks + final norm, no LM head
    blocks: list[nn.Module]  # block i's output is the residual stream x_i
    attn: list[nn.Module]  # per block: the attention sublayer (its output is added to the stream)
    mlp: list[nn.Module]  # per block: the MLP sublayer (likewise)
    attn_out_proj: list[nn.Module]  # per block: its input is the concatenated head outputs
    qk_source: list[nn.Module]  # per block: its output holds the attention queries and keys
    split_qk: Callable[[Tensor], tuple[Tensor, Tensor]]  # that output -> q, k (B, H, T, hd)
    attn_scaling: list[float]  # per block: the factor on q.k before the softmax
    n_head: int
    n_embd: int
    n_positions: int
    vocab_size: int

    @property
    def n_layer(self) -> int:
        return len(self.blocks)


def _gpt2_layout(model: nn.Module) -> DecoderLayout:
    cfg = model.config
    blocks = list(model.transformer.h)

    def split_qk(qkv: Tensor) -> tuple[Tensor, Tensor]:
        q, k, _ = qkv.split(cfg.n_embd, dim=2)  # c_attn output (B, T, 3D): q | k | v
        shape = (*q.shape[:2], cfg.n_head, -1)
        return q.view(shape).transpose(1, 2), k.view(shape).transpose(1, 2)  # (B, H, T, hd)

    return DecoderLayout(
        backbone=model.transformer,
        blocks=blocks,
        attn=[b.attn for b in blocks],
        mlp=[b.mlp for b in blocks],
        attn_out_proj=[b.attn.c_proj for b in blocks],
        qk_source=[b.attn.c_attn for b in blocks],
        split_qk=split_qk,
        attn_scaling=[float(b.attn.scaling) for b in blocks],
        n_head=cfg.n_head,
        n_embd=cfg.n_embd,
        n_positions=cfg.n_positions,
        vocab_size=cfg.vocab_size,
    )


_LAYOUTS = {"gpt2": _gpt2_layout}


def decoder_layout(model: nn.Module) -> DecoderLayout:
    """Return the layout of `model`, or say which model types are supported."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in _LAYOUTS:
        raise InputError(f"model_type {model_type!r} is not supported; supported: {sorted(_LAYOUTS)}")
    return _LAYOUTS[model_type](model)


def block_output(output: Tensor | tuple) -> Tensor:
    """A block's residual output: transformers 5 returns a Tensor, 4.x a tuple."""
    return output[0] if isinstance(output, tuple) else output
