"""Where each decoder family keeps its parts.

Everything that depends on a model's module layout lives here, so metrics, probes and
the LightningModule never name `transformer.h` or `self_attn.o_proj` themselves. A family
is one `Family` row: the path to its decoder layers and, inside a layer, the names of the
attention sublayer, its output projection, and the two modules whose outputs are what
attention and the MLP add to the residual stream. Head scores need nothing family-specific:
every family sends its attention through transformers' attention-function registry
(see `probes.attention`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor, nn

from lit_massive.errors import InputError


@dataclass(frozen=True)
class Family:
    """Module names of one decoder family, relative to the base model and to a layer."""

    layers: str  # base model -> its list of decoder layers
    attn: str  # layer -> attention sublayer (the `module` its attention function receives)
    out_proj: str  # layer -> attention output projection (its input: the heads, concatenated)
    attn_out: str  # layer -> module whose output is what attention adds to the residual stream
    mlp_out: str  # layer -> module whose output is what the MLP adds
    # layer -> the MLP's output projection (a Linear, GPT-2's Conv1D), whose weight holds the
    # super weight (Yu et al., arXiv 2411.07191); None: no single one (Mixtral's, gpt-oss's fused experts)
    mlp_down: str | None = None
    mlp_in: str = "mlp"  # layer -> the module whose input is what the MLP reads (OPT: its first projection)


# pre-norm blocks: x + attn(norm(x)), then + mlp(norm(.)); parallel blocks (GPT-NeoX with
# use_parallel_residual, Phi) add both to the same input, which the same names describe
_PRE_NORM = Family("layers", "self_attn", "self_attn.o_proj", "self_attn", "mlp", "mlp.down_proj")
# sandwich norms (Gemma 2/3, OLMo 2): a sublayer's output is normalised before it is added
_SANDWICH = Family(
    "layers", "self_attn", "self_attn.o_proj", "post_attention_layernorm", "post_feedforward_layernorm", "mlp.down_proj"
)

FAMILIES: dict[str, Family] = {
    "gpt2": Family("h", "attn", "attn.c_proj", "attn", "mlp", "mlp.c_proj"),
    "gpt_neox": Family("layers", "attention", "attention.dense", "attention", "mlp", "mlp.dense_4h_to_h"),
    "opt": Family("decoder.layers", "self_attn", "self_attn.out_proj", "self_attn", "fc2", "fc2", mlp_in="fc1"),
    "llama": _PRE_NORM,
    "mistral": _PRE_NORM,
    # its `mlp` is the sparse mixture-of-experts block; its experts' down projections are one
    # fused (E, D, I) parameter, no module to hook
    "mixtral": replace(_PRE_NORM, mlp_down=None),
    # learned attention sinks (`self_attn.sinks`, see `probes.attention`) and a mixture of
    # experts whose down projections are one fused parameter, as Mixtral's
    "gpt_oss": replace(_PRE_NORM, mlp_down=None),
    "qwen2": _PRE_NORM,
    "qwen3": _PRE_NORM,
    "gemma": _PRE_NORM,
    "gemma2": _SANDWICH,
    "gemma3_text": _SANDWICH,
    "phi": Family("layers", "self_attn", "self_attn.dense", "self_attn", "mlp", "mlp.fc2"),
    "phi3": _PRE_NORM,
    "olmo2": _SANDWICH,
}


@dataclass(frozen=True)
class DecoderLayout:
    """The parts of a decoder-only LM that the probes need."""

    backbone: nn.Module  # runs embeddings + blocks + final norm, no LM head
    blocks: list[nn.Module]  # block i's output is the residual stream x_i
    attn: list[nn.Module]  # per block: the attention sublayer
    attn_out: list[nn.Module]  # per block: its output is what attention adds to the stream
    mlp_out: list[nn.Module]  # per block: likewise for the MLP
    attn_out_proj: list[nn.Module]  # per block: its input is the concatenated head outputs
    lm_head: nn.Linear  # final hidden state -> logits
    final_logit_softcap: float | None  # Gemma 2/3: logits = cap * tanh(logits / cap)
    attn_implementation: str  # the attention-function registry key the model calls
    additive: bool  # block output = input + attn_out + mlp_out (False: a norm after the sum)
    n_head: int  # query heads
    n_kv_head: int
    n_embd: int
    n_positions: int
    vocab_size: int
    # per block: the MLP's output projection (`Family.mlp_down`); None where the family has none
    mlp_down: list[nn.Module] | None = None
    mlp_in: list[nn.Module] | None = None  # per block: its input is what the MLP reads (`Family.mlp_in`)

    @property
    def n_layer(self) -> int:
        return len(self.blocks)


def _get(module: nn.Module, path: str) -> nn.Module:
    for name in path.split("."):
        module = getattr(module, name)
    return module


def _config_value(cfg, *names: str) -> int | None:
    return next((getattr(cfg, n) for n in names if getattr(cfg, n, None) is not None), None)


def decoder_layout(model: nn.Module) -> DecoderLayout:
    """Return the layout of `model`, or say which model types are supported."""
    cfg = model.config
    family = FAMILIES.get(getattr(cfg, "model_type", None))
    if family is None:
        raise InputError(f"model_type {cfg.model_type!r} is not supported; supported: {sorted(FAMILIES)}")
    backbone = model.base_model
    blocks = list(_get(backbone, family.layers))
    n_head = _config_value(cfg, "num_attention_heads", "n_head")
    return DecoderLayout(
        backbone=backbone,
        blocks=blocks,
        attn=[_get(b, family.attn) for b in blocks],
        attn_out=[_get(b, family.attn_out) for b in blocks],
        mlp_out=[_get(b, family.mlp_out) for b in blocks],
        attn_out_proj=[_get(b, family.out_proj) for b in blocks],
        lm_head=model.get_output_embeddings(),
        final_logit_softcap=getattr(cfg, "final_logit_softcapping", None),
        attn_implementation=cfg._attn_implementation,
        # OPT-350m normalises after each residual sum: no sublayer "adds" to the stream
        additive=getattr(cfg, "do_layer_norm_before", True),
        n_head=n_head,
        n_kv_head=_config_value(cfg, "num_key_value_heads") or n_head,
        n_embd=_config_value(cfg, "hidden_size", "n_embd"),
        n_positions=_config_value(cfg, "max_position_embeddings", "n_positions"),
        vocab_size=cfg.vocab_size,
        mlp_down=None if family.mlp_down is None else [_get(b, family.mlp_down) for b in blocks],
        mlp_in=[_get(b, family.mlp_in) for b in blocks],
    )


def block_output(output: Tensor | tuple) -> Tensor:
    """A module's main output: transformers 5 blocks return a Tensor, attention a tuple."""
    return output[0] if isinstance(output, tuple) else output
