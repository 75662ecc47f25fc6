"""Perplexity against the Hugging Face fixed-length recipe."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import read_texts, run_validate, tiny_run_args
from lit_massive.analyses.perplexity import token_nll


def _hf_recipe_perplexity(model_dir, jsonl, seq_len, stride, n):
    """The recipe from the transformers docs ("perplexity of fixed-length models"), with
    token-weighted averaging and only full windows, as plain transformers code."""
    ids = AutoTokenizer.from_pretrained(model_dir)("\n\n".join(read_texts(jsonl)), return_tensors="pt").input_ids
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, n * stride, stride):
        end = begin + seq_len
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss
        valid = int((target_ids[:, 1:] != -100).sum())  # the model shifts labels left by one
        nll_sum += float(loss) * valid
        n_tokens += valid
        prev_end = end
    return math.exp(nll_sum / n_tokens), nll_sum, n_tokens


@pytest.mark.parametrize("stride", [48, 20])
def test_perplexity_matches_hf_recipe(tmp_path, tiny_gpt2_dir, corpus_jsonl, stride):
    seq_len, n = 48, 6
    _, results = run_validate(
        tmp_path, *tiny_run_args(tiny_gpt2_dir, corpus_jsonl, seq_len, n, 4, "--data.stride", str(stride))
    )
    ppl, nll_sum, tokens = _hf_recipe_perplexity(tiny_gpt2_dir, corpus_jsonl, seq_len, stride, n)
    baseline = results["variants"]["baseline"]
    assert baseline["scored_tokens"] == tokens == (seq_len - 1) + (n - 1) * min(stride, seq_len - 1)
    assert baseline["nll_sum"] == pytest.approx(nll_sum, rel=1e-6)
    assert baseline["perplexity"] == pytest.approx(ppl, rel=1e-6)


@pytest.mark.parametrize("softcap", [None, 2.0])
def test_chunked_nll_equals_whole_logits(softcap):
    """The LM head sees at most `chunk_logits` logits at a time; the sums equal a
    log-softmax-and-gather over the whole (B, T, V) logits."""
    torch.manual_seed(0)
    b, t, d, v = 2, 11, 16, 50
    hidden, ids = torch.randn(b, t, d), torch.randint(0, v, (b, t))
    score_from = torch.tensor([1, 4])
    head = torch.nn.Linear(d, v)
    seen = []
    head.register_forward_hook(lambda m, a, o: seen.append(o.shape[1]))
    total, tokens, nonfinite = token_nll(hidden, head, ids, score_from, softcap, chunk_logits=3 * b * v)
    assert max(seen) == 3 and sum(seen) == t - 1  # chunks of 3 positions; the last has no target
    with torch.no_grad():
        logits = head(hidden).double()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    logp = logits.log_softmax(-1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    scored = torch.arange(1, t)[None] >= score_from[:, None]
    assert int(tokens) == int(scored.sum()) and int(nonfinite) == 0
    assert float(total) == pytest.approx(float(-(logp * scored).sum()), rel=1e-6)
