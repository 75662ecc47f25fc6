"""Tiny random checkpoints of every supported family, built offline, with planted ground truth.

Each is a real transformers model (hidden size 64, 3 layers, grouped-query attention, sliding
windows, q/k norms, softcapping, partial rotary where the family has them) saved with the toy
word-level tokenizer, which adds a BOS token where the family's real tokenizer does. Two
embedding entries are planted so every family has massive activations to find: token
`<|endoftext|>` (the BOS) carries PLANTED_BOS in dim BOS_DIM, and token "." carries
PLANTED_DOT in dim DOT_DIM, so massive tokens sit at position 0 (with BOS) and later.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lit_massive.models.toy import EOS, _vocab, build_toy_tokenizer

BOS_DIM, DOT_DIM = 7, 11
PLANTED_BOS, PLANTED_DOT = 600.0, 400.0
# gpt-oss's learned sink logit per head, planted large in one (layer, head): it takes most of
# that head's attention, where the random ones (about 0) take a share of about 1 / (keys + 1)
SINK_HEAD, PLANTED_SINK = (1, 2), 6.0
SLIDING_WINDOW = 8  # shorter than the test windows, so sliding layers differ from full ones

_COMMON = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=3, intermediate_size=96)
_GQA = dict(_COMMON, num_key_value_heads=2)
_SLIDING = dict(sliding_window=SLIDING_WINDOW)

# model_type -> (config kwargs, does the family's tokenizer add BOS)
FAMILY_CONFIGS: dict[str, tuple[dict, bool]] = {
    "gpt2": (dict(n_embd=64, n_head=4, n_layer=3), False),
    "gpt_neox": (dict(_COMMON, rotary_pct=0.5, use_parallel_residual=True), False),
    "opt": (dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=3, ffn_dim=96, word_embed_proj_dim=64), True),
    "llama": (_GQA, True),
    "mistral": (dict(_GQA, **_SLIDING), True),
    "mixtral": (dict(_GQA, **_SLIDING, num_local_experts=4, num_experts_per_tok=2), True),
    "gpt_oss": (
        dict(_GQA, **_SLIDING, head_dim=16, num_local_experts=4, num_experts_per_tok=2)
        | {"layer_types": ["sliding_attention", "full_attention", "sliding_attention"]},
        False,
    ),
    "qwen2": (dict(_GQA, use_sliding_window=True, max_window_layers=1, **_SLIDING), False),
    "qwen3": (dict(_GQA, head_dim=16), False),
    "gemma": (dict(_COMMON, num_key_value_heads=1, head_dim=16), True),
    "gemma2": (
        dict(_GQA, head_dim=16, query_pre_attn_scalar=24, attn_logit_softcapping=5.0, final_logit_softcapping=10.0)
        | _SLIDING,
        True,
    ),
    "gemma3_text": (
        dict(_GQA, head_dim=16, query_pre_attn_scalar=24, **_SLIDING)
        | {"layer_types": ["sliding_attention", "full_attention", "sliding_attention"]},
        True,
    ),
    "phi": (dict(_COMMON, partial_rotary_factor=0.5), False),
    "phi3": (_GQA, True),
    "olmo2": (_GQA, False),
}
FAMILIES = sorted(FAMILY_CONFIGS)


def save_family(model_type: str, directory: Path, seed: int = 0, **overrides) -> Path:
    """Build, plant and save the tiny `model_type` checkpoint with its tokenizer."""
    kwargs, bos = FAMILY_CONFIGS[model_type]
    kwargs = {**kwargs, **overrides}
    vocab = _vocab()
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(vocab),
        max_position_embeddings=128,
        bos_token_id=vocab[EOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab["<unk>"],
        **kwargs,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        embed = model.get_input_embeddings().weight
        embed[vocab[EOS], BOS_DIM] = PLANTED_BOS
        embed[vocab["."], DOT_DIM] = PLANTED_DOT
        sinks = getattr(model.model.layers[SINK_HEAD[0]].self_attn, "sinks", None) if model_type == "gpt_oss" else None
        if sinks is not None:
            sinks[SINK_HEAD[1]] = PLANTED_SINK
    model.save_pretrained(directory)
    build_toy_tokenizer(bos=bos).save_pretrained(directory)
    return directory
