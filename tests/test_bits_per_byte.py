"""Bits per byte, byte and word perplexity against a hand computation (no project code): the
scored tokens' text from the tokenizer's own offsets (word-level toy) or exact token bytes
(byte-level BPE), NLL from the plain transformers model."""

import json
import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from helpers import read_texts, run_validate, run_validate_ddp, tiny_run_args
from lit_massive.analyses.perplexity import Perplexity, PerplexityAnalysis
from lit_massive.models.toy import save_toy

NEW_KEYS = ("bits_per_byte", "byte_perplexity", "word_perplexity", "scored_tokens", "scored_bytes", "scored_words")
EOS = "<|endoftext|>"
SEQ_LEN, N = 32, 5


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table of byte-level BPE (the printable bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + k) for k, b in enumerate(others)}}


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory):
    """The toy model (word-level tokenizer: whitespace is in no token) saved as a checkpoint."""
    return save_toy(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="session")
def unicode_jsonl(tmp_path_factory, corpus_jsonl):
    """The corpus rows with multi-byte characters mixed in, so bytes differ from characters."""
    extra = ["Café déjà vu — naïve señor über 日本語 text .", "  Ünïcödé   rows : ½ € ∑ 🙂 end . "]
    rows = [r for pair in zip(read_texts(corpus_jsonl), extra * 1000, strict=False) for r in pair]
    path = tmp_path_factory.mktemp("unicode") / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def byte_level_dir(tmp_path_factory, unicode_jsonl):
    """A tiny GPT-2 with a byte-level BPE tokenizer (GPT-2's kind) trained on those rows."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[EOS]
    )
    tok.train_from_iterator(read_texts(unicode_jsonl), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, model_max_length=64)
    directory = tmp_path_factory.mktemp("byte_level")
    torch.manual_seed(7)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=4)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _hand(model_dir, jsonl, seq_len, stride, n, bos, byte_level):
    """NLL sum, scored tokens, bytes and words, by hand: windows sliced from the token list,
    each scoring the tokens no earlier window covered (never BOS, never a window's first
    token without BOS); the scored text is that of each run of consecutive scored tokens."""
    text = "\n\n".join(read_texts(jsonl))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    text_len = seq_len - bos
    nll, scored, covered = 0.0, [], -1
    for i in range(n):
        first = i * stride
        window = ([tokenizer.bos_token_id] if bos else []) + ids[first : first + text_len]
        with torch.no_grad():
            logp = model(torch.tensor([window])).logits[0].double().log_softmax(-1)
        for t in range(first, first + text_len):
            p = t - first + bos  # position in the window
            if t > covered and p >= 1:
                nll -= float(logp[p - 1, window[p]])
                scored.append(t)
        covered = first + text_len - 1
    runs, start = [], 0
    for k in range(1, len(scored) + 1):
        if k == len(scored) or scored[k] != scored[k - 1] + 1:
            runs.append(scored[start:k])
            start = k
    if byte_level:  # exact: each token's own bytes
        decoder = {c: b for b, c in bytes_to_unicode().items()}
        pieces = [bytes(decoder[c] for t in run for c in tokenizer.convert_ids_to_tokens(ids[t])) for run in runs]
    else:  # the text from the first token's start to the last one's end
        pieces = [text[offsets[run[0]][0] : offsets[run[-1]][1]].encode("utf-8") for run in runs]
    n_bytes = sum(len(p) for p in pieces)
    n_words = sum(len(p.decode("utf-8").split()) for p in pieces)
    return nll, len(scored), n_bytes, n_words


def _check(entry, nll, tokens, n_bytes, n_words):
    assert (entry["scored_tokens"], entry["scored_bytes"], entry["scored_words"]) == (tokens, n_bytes, n_words)
    assert entry["nll_sum"] == pytest.approx(nll, rel=1e-6)
    assert entry["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-6)
    assert entry["bits_per_byte"] == pytest.approx(nll / (math.log(2) * n_bytes), rel=1e-6)
    assert entry["byte_perplexity"] == pytest.approx(math.exp(nll / n_bytes), rel=1e-6)
    assert entry["word_perplexity"] == pytest.approx(math.exp(nll / n_words), rel=1e-6)


@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("family", ["toy", "byte_level"])
def test_text_numbers_match_hand_computation(tmp_path, request, corpus_jsonl, unicode_jsonl, family, overlap, bos):
    byte_level = family == "byte_level"
    model_dir = request.getfixturevalue("byte_level_dir" if byte_level else "toy_dir")
    jsonl = unicode_jsonl if byte_level else corpus_jsonl
    stride = 12 if overlap else SEQ_LEN - bos
    args = tiny_run_args(model_dir, jsonl, SEQ_LEN, N, 2, "--data.stride", str(stride), "--data.bos", str(bos).lower())
    _, results = run_validate(tmp_path, *args)
    entry = results["variants"]["baseline"]
    hand = _hand(model_dir, jsonl, SEQ_LEN, stride, N, bos, byte_level)
    _check(entry, *hand)
    if overlap:  # every token after the first (or every token, with BOS) scored once: one span
        assert hand[1] == (N - 1) * stride + SEQ_LEN - 1


def test_streaming_gives_the_same_counts(tmp_path, toy_dir, corpus_jsonl):
    args = tiny_run_args(toy_dir, corpus_jsonl, SEQ_LEN, N, 2, "--data.stride", "10")
    _, whole = run_validate(tmp_path / "whole", *args)
    _, streamed = run_validate(tmp_path / "streamed", *args, "--data.streaming", "true")
    for key in NEW_KEYS:
        assert streamed["variants"]["baseline"][key] == whole["variants"]["baseline"][key], key


def test_windows_without_text_have_null_text_numbers():
    metric = Perplexity()
    metric.update(torch.tensor(10.0, dtype=torch.float64), torch.tensor(5), torch.tensor(0), [7], [2])
    metric.update(torch.tensor(4.0, dtype=torch.float64), torch.tensor(2), torch.tensor(0))  # no counts
    section = PerplexityAnalysis.section(None, metric.compute(), str)
    assert section["perplexity"] == pytest.approx(math.exp(2.0))
    assert all(section[k] is None for k in ("bits_per_byte", "byte_perplexity", "word_perplexity"))
    assert section["scored_bytes"] is None and section["scored_words"] is None and section["scored_tokens"] == 7


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path, byte_level_dir, unicode_jsonl):
    args = tiny_run_args(byte_level_dir, unicode_jsonl, SEQ_LEN, N, 2, "--data.stride", "12")
    _, one = run_validate(tmp_path / "one", *args)
    two = run_validate_ddp(tmp_path / "two", *args)
    a, b = one["variants"]["baseline"], two["variants"]["baseline"]
    for key in NEW_KEYS:
        assert b[key] == (pytest.approx(a[key], rel=1e-9) if isinstance(a[key], float) else a[key]), key
    _check(b, *_hand(byte_level_dir, unicode_jsonl, SEQ_LEN, 12, N, False, True))
