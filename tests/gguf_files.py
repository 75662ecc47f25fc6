"""Tiny Llama checkpoints written to GGUF with the `gguf` package, with planted ground truth.

`write_tiny_gguf` saves one random tiny Llama twice: as a transformers checkpoint (the
reference) and as a GGUF file the way llama.cpp's converter writes one (q and k rows
permuted for its rotary layout, norms in F32, tied output unless `tied=False`), its 2-D
weights, the token embedding included, in F32 or any type the `gguf` package quantizes
(F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0). Its tokenizer is a byte-level BPE trained on the
bundled corpus (a few hundred tokens), stored in the file as llama.cpp stores GPT-2-style
tokenizers. The embeddings of "." and " ." (WikiText's full stop) carry PLANTED (or
`planted`) in dim DIM, so every block output has a massive activation there.
`dequantized_state_dict` reads a written file back with the `gguf` package alone (no
transformers, no project code): the weights a run of the file computes with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

from lit_massive.models.toy import corpus_path

DIM, PLANTED = 11, 400.0
PLANTED_TOKENS = (".", "\u0120.")  # ".", " ." in byte-level BPE's alphabet
EOS = "<|endoftext|>"
HIDDEN, HEADS, KV_HEADS, LAYERS, FFN = 64, 4, 2, 3, 96


@dataclass
class TinyGGUF:
    path: Path  # the .gguf file
    reference: Path  # the same weights as a transformers checkpoint
    tensor_types: dict[str, int]  # GGUF type name -> how many tensors were written in it


def _tokenizer(vocab_size: int = 384) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([corpus_path().read_text(encoding="utf-8")[:200_000]], trainer)
    return tok


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order of a q or k projection (the converter's `permute`)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# llama.cpp's name of each block weight -> transformers' name
_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}  # fmt: skip


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """transformers' row order of a q or k projection stored in llama.cpp's (`_permute` undone)."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def dequantized_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The weights of a GGUF file written by `write_tiny_gguf`, under transformers' names, each
    tensor dequantized by `gguf.quants.dequantize` (float32) and q, k back in transformers'
    row order: what a run of the file computes with, read without transformers."""
    theirs = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}  # fmt: skip
    for i in range(LAYERS):
        theirs.update({f"blk.{i}.{ours}.weight": f"model.layers.{i}.{name}.weight" for ours, name in _NAMES.items()})
    out = {}
    for tensor in gguf.GGUFReader(path).tensors:
        shape = tuple(reversed([int(n) for n in tensor.shape]))  # GGUF lists the fastest-varying axis first
        w = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32).reshape(shape)
        if tensor.name.endswith("attn_q.weight"):
            w = _unpermute(w, HEADS)
        elif tensor.name.endswith("attn_k.weight"):
            w = _unpermute(w, KV_HEADS)
        out[theirs[tensor.name]] = torch.from_numpy(w.copy())
    return out


def _tensors(model: LlamaForCausalLM) -> dict[str, np.ndarray]:
    """The model's weights under llama.cpp's names, q and k permuted."""
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if not model.config.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    for i in range(LAYERS):
        for ours, theirs in _NAMES.items():
            w = sd[f"model.layers.{i}.{theirs}.weight"]
            if ours == "attn_q":
                w = _permute(w, HEADS)
            elif ours == "attn_k":
                w = _permute(w, KV_HEADS)
            out[f"blk.{i}.{ours}.weight"] = w
    return out


def _metadata(writer: gguf.GGUFWriter, tok: Tokenizer, file_type: gguf.LlamaFileType) -> None:
    writer.add_name("tiny planted llama")
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(tok.get_vocab_size())
    writer.add_file_type(file_type)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    merges = json.loads(tok.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list([t for t, _ in vocab])
    writer.add_token_types([gguf.TokenType.CONTROL if t == EOS else gguf.TokenType.NORMAL for t, _ in vocab])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    eos = tok.token_to_id(EOS)
    writer.add_bos_token_id(eos)
    writer.add_eos_token_id(eos)
    writer.add_add_bos_token(False)


def write_tiny_gguf(
    directory: Path, qtype: str = "F32", seed: int = 0, planted: float = PLANTED, tied: bool = True
) -> TinyGGUF:
    """Write `tiny-<qtype>.gguf` and its transformers twin `reference/` into `directory`.

    `planted`: the value in dim DIM of the full stops' embeddings (a block's largest entry,
    so its quantization error is that of the block's float16 scale: 400 is exact in Q4_0,
    whose scale is 400 / 8). `tied=False` writes a separate random output matrix
    (`output.weight`), so the planted embedding does not reach the logits and the
    perplexity stays near the vocabulary's size instead of ~1e64."""
    tok = _tokenizer()
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=256, rms_norm_eps=1e-6,
        rope_theta=10000.0, tie_word_embeddings=tied, bos_token_id=tok.token_to_id(EOS),
        eos_token_id=tok.token_to_id(EOS),
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for token in PLANTED_TOKENS:
            model.model.embed_tokens.weight[tok.token_to_id(token), DIM] = planted
    quantized = gguf.GGMLQuantizationType[qtype]
    file_type = gguf.LlamaFileType.ALL_F32 if qtype == "F32" else gguf.LlamaFileType[f"MOSTLY_{qtype}"]
    path = Path(directory) / f"tiny-{qtype}.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    _metadata(writer, tok, file_type)
    counts: dict[str, int] = {}
    for name, w in _tensors(model).items():
        kind = quantized if w.ndim == 2 else gguf.GGMLQuantizationType.F32
        data = w if kind == gguf.GGMLQuantizationType.F32 else gguf.quants.quantize(w.astype(np.float32), kind)
        writer.add_tensor(name, data, raw_dtype=None if kind == gguf.GGMLQuantizationType.F32 else kind)
        counts[kind.name] = counts.get(kind.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reference = Path(directory) / "reference"
    model.save_pretrained(reference)
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS).save_pretrained(reference)
    return TinyGGUF(path, reference, counts)
