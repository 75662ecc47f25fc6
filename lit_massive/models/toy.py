"""A small deterministic GPT-2 with planted ground truth, and its corpus and tokenizer.

It lets the demo and the tests run with no network, and gives them answers known in
advance. The model is a real `GPT2LMHeadModel` (same module names, same hooks) with seeded
random weights, plus one planted circuit that imitates GPT-2's massive activation:

* `wpe[0, flag_dim] = 1` and every other embedding entry of `flag_dim` is 0, so the
  residual stream "knows" it is at token position 0;
* in block `massive_layer`, MLP neuron 0 reads `flag_dim` after `ln_2` with a large weight
  and a bias that keeps it off elsewhere, and writes about `massive_value` into
  `massive_dim`. Later blocks' weights are small, so the value persists to the last block,
  as in GPT-2 (Sun et al. 2024, fig. 1).

* head `sink_head` (5, 1) gets a constant query (from its bias) and a key that reads
  `massive_dim`, so every query attends to token 0: an attention sink that exists because of
  the massive activation, with a first-token score near 1;
* head `writer_head` (8, 3) attends the same way and its value reads `massive_dim`; its
  output projection writes about `written_value` into `written_dim` at every position. That
  is large next to ordinary entries (|x| about 1 at most) but below the 100 of the massive
  criterion, so it is not massive and position 0 stays the only massive token, as in GPT-2.
  It is written by attention, so pruning that head removes it: top-2 and top-3 fall by
  about 98 % and 99.7 % from block 8 on while top-1 stays put;
* head `dormant_head` (3, 7) attends like any random head but its values are scaled by
  `dormant_scale` (1e-3): its output norm is ~1000x below the others', a dormant head.

Ground truth (defaults of `ToyConfig`): the first block whose output holds a massive
activation is block 2; it sits at feature dim 17, token position 0, with |value| near
2000, while block-output medians are around 0.02 (ratio far above 1000). It is the only
massive activation: from block 2 on the only massive token is position 0, so every head's
massive-token score equals its first-token score. Heads (5, 1) and (8, 3) have first-token
scores near 1; random heads score about the 1/(position + 1) of uniform attention (about
0.04, averaged over a 128-token window), so the share of all attention that lands on
massive tokens is about 0.04 in each block and 0.12 in blocks 5 and 8. From block 8 on,
top-2 and top-3 are the writer's entries, about 50.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

TOY = "toy"
EOS = "<|endoftext|>"
UNK = "<unk>"


def corpus_path() -> Path:
    """The bundled corpus: WikiText raw layout, written for this project."""
    return Path(str(files("lit_massive") / "corpus" / "wiki.test.raw"))


@dataclass(frozen=True)
class ToyConfig:
    # GPT-2 small's block and head counts, so head coordinates in the study's configs fit
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 96
    n_positions: int = 256
    seed: int = 0
    massive_layer: int = 2  # block whose MLP writes the massive activation
    massive_dim: int = 17
    massive_position: int = 0  # only position 0 is supported by the flag circuit
    massive_value: float = 2000.0
    flag_dim: int = 5  # carries "this is position 0" from wpe to the MLP
    sink_head: tuple[int, int] = (5, 1)  # (layer, head) that puts ~all attention on token 0
    writer_head: tuple[int, int] = (8, 3)  # reads token 0 like the sink and writes ...
    written_dim: int = 40  # ... about written_value into this dim at every position
    written_value: float = 50.0  # below massive_threshold (100): large, but not massive
    dormant_head: tuple[int, int] = (3, 7)  # its values are scaled down: it outputs ~0
    dormant_scale: float = 1e-3


@lru_cache(maxsize=1)
def _vocab() -> dict[str, int]:
    text = corpus_path().read_text(encoding="utf-8")
    words = {w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)}
    return {tok: i for i, tok in enumerate([EOS, UNK, *sorted(words)])}


def build_toy_tokenizer(bos: bool = False) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the bundled corpus's words; unknown words map to <unk>.
    With `bos`, it puts `<|endoftext|>` first when called with special tokens, as Llama's
    tokenizer puts `<s>` (GPT-2's does not), so both BOS behaviours can be tested offline."""
    tok = Tokenizer(models.WordLevel(vocab=_vocab(), unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{EOS} $A", pair=f"{EOS} $A $B", special_tokens=[(EOS, _vocab()[EOS])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=ToyConfig.n_positions,
    )


def toy_config(config: ToyConfig = ToyConfig(), attn_implementation: str | None = None) -> GPT2Config:
    """The toy's transformers config: what a run needs to know before any weight exists."""
    eos = _vocab()[EOS]
    gpt2_config = GPT2Config(
        vocab_size=len(_vocab()),
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    if attn_implementation is not None:
        gpt2_config._attn_implementation = attn_implementation
    return gpt2_config


def build_toy_model(config: ToyConfig = ToyConfig(), attn_implementation: str | None = None) -> GPT2LMHeadModel:
    """Seeded random GPT-2 weights (drawn on the CPU in float32, whatever
    the default device and dtype) plus the
    planted circuit described in the module docstring."""
    gpt2_config = toy_config(config, attn_implementation)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with torch.random.fork_rng(devices=[]), torch.device("cpu"):  # the CPU generator's draws
            torch.manual_seed(config.seed)
            model = GPT2LMHeadModel(gpt2_config)
    finally:
        torch.set_default_dtype(default)
    _plant_massive_activation(model, config)
    _plant_first_token_head(model, config, *config.sink_head)
    _plant_first_token_head(model, config, *config.writer_head, write=True)
    _plant_dormant_head(model, config, *config.dormant_head)
    return model.eval()


@torch.no_grad()
def _plant_massive_activation(model: GPT2LMHeadModel, c: ToyConfig) -> None:
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
    wte[:, c.flag_dim] = 0.0
    wpe[:, c.flag_dim] = 0.0
    wpe[c.massive_position, c.flag_dim] = 1.0
    # After ln_2 the flag reads about sqrt(n_embd) at position 0 and O(1) elsewhere;
    # gain * flag - bias is then ~35 at position 0 and far below 0 (GELU ~ 0) elsewhere.
    gain, bias = 12.0, 60.0
    on_value = gain * (c.n_embd - 1) ** 0.5 - bias
    mlp = model.transformer.h[c.massive_layer].mlp
    mlp.c_fc.weight[:, 0] = 0.0  # Conv1D weight is (in, out)
    mlp.c_fc.weight[c.flag_dim, 0] = gain
    mlp.c_fc.bias[0] = -bias
    mlp.c_proj.weight[0, :] = 0.0
    mlp.c_proj.weight[0, c.massive_dim] = c.massive_value / on_value


@torch.no_grad()
def _plant_first_token_head(model: GPT2LMHeadModel, c: ToyConfig, layer: int, head: int, write=False) -> None:
    """Query component 0 is a constant; key component 0 reads `massive_dim` (about
    sqrt(n_embd) after ln_1 at token 0, O(1) elsewhere), so the score on token 0 is ~30
    above the rest. With `write`, value component 0 also reads `massive_dim` and the
    output projection sends it to `written_dim`."""
    d, hd = c.n_embd, c.n_embd // c.n_head
    attn = model.transformer.h[layer].attn
    w, b = attn.c_attn.weight, attn.c_attn.bias  # Conv1D (in, 3 * d): q | k | v
    q, k, v = head * hd, d + head * hd, 2 * d + head * hd
    w[:, [q, k, v]] = 0.0
    b[[q, k, v]] = 0.0
    b[q] = 3.0
    w[c.massive_dim, k] = 3.0
    if write:
        on_value = (d - 1) ** 0.5  # value component 0 at token 0
        w[c.massive_dim, v] = 1.0
        attn.c_proj.weight[head * hd, :] = 0.0
        attn.c_proj.weight[head * hd, c.written_dim] = c.written_value / on_value


@torch.no_grad()
def _plant_dormant_head(model: GPT2LMHeadModel, c: ToyConfig, layer: int, head: int) -> None:
    """Scale the head's value weights by `dormant_scale` and zero their bias: it attends as
    before but writes ~0 (a dormant head, found by its output norm, not by its attention)."""
    d, hd = c.n_embd, c.n_embd // c.n_head
    attn = model.transformer.h[layer].attn
    v = slice(2 * d + head * hd, 2 * d + (head + 1) * hd)
    attn.c_attn.weight[:, v] *= c.dormant_scale
    attn.c_attn.bias[v] = 0.0


def save_toy(directory: str | Path, config: ToyConfig = ToyConfig()) -> Path:
    """Write the toy model and tokenizer as a local `from_pretrained` directory."""
    directory = Path(directory)
    build_toy_model(config).save_pretrained(directory)
    build_toy_tokenizer().save_pretrained(directory)
    return directory
