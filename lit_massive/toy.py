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

Ground truth (defaults of `ToyConfig`): the first block whose output holds a massive
activation is block 2; it sits at feature dim 17, token position 0, with |value| near
2000, while block-output medians are around 0.02 (ratio far above 1000).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

TOY = "toy"
EOS = "<|endoftext|>"
UNK = "<unk>"


def corpus_path() -> Path:
    """The bundled corpus: WikiText raw layout, written for this project."""
    return Path(str(files("lit_massive") / "corpus" / "wiki.test.raw"))


@dataclass(frozen=True)
class ToyConfig:
    n_layer: int = 6
    n_head: int = 4
    n_embd: int = 64
    n_positions: int = 256
    seed: int = 0
    massive_layer: int = 2  # block whose MLP writes the massive activation
    massive_dim: int = 17
    massive_position: int = 0  # only position 0 is supported by the flag circuit
    massive_value: float = 2000.0
    flag_dim: int = 5  # carries "this is position 0" from wpe to the MLP


@lru_cache(maxsize=1)
def _vocab() -> dict[str, int]:
    text = corpus_path().read_text(encoding="utf-8")
    words = {w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)}
    return {tok: i for i, tok in enumerate([EOS, UNK, *sorted(words)])}


def build_toy_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the bundled corpus's words; unknown words map to <unk>."""
    tok = Tokenizer(models.WordLevel(vocab=_vocab(), unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=ToyConfig.n_positions,
    )


def build_toy_model(
    config: ToyConfig = ToyConfig(), attn_implementation: str | None = None
) -> GPT2LMHeadModel:
    """Seeded random GPT-2 weights plus the planted circuit described in the module docstring."""
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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = GPT2LMHeadModel(gpt2_config)
    _plant_massive_activation(model, config)
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


def save_toy(directory: str | Path, config: ToyConfig = ToyConfig()) -> Path:
    """Write the toy model and tokenizer as a local `from_pretrained` directory."""
    directory = Path(directory)
    build_toy_model(config).save_pretrained(directory)
    build_toy_tokenizer().save_pretrained(directory)
    return directory
