"""Attention on massive tokens (position 0 and later ones), per head and per block."""

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import read_texts, run_validate, tiny_run_args
from lit_massive.cli import rank_heads
from lit_massive.variants import rank_heads as ranking

SEQ, N = 24, 4


def _reference(model_dir, jsonl):
    """Eager attention maps, and each window's massive tokens from plain forward hooks on
    the decoder layers: positions where some block output has |x| > 100 and > 1000 x that
    window's median |x| of the block."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("\n\n".join(read_texts(jsonl)), add_special_tokens=False)["input_ids"]
    n = SEQ - 1  # the llama family's tokenizer adds BOS
    windows = torch.tensor([[tokenizer.bos_token_id, *ids[i * n : (i + 1) * n]] for i in range(N)])
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    outputs = []
    handles = [layer.register_forward_hook(lambda m, a, o: outputs.append(o)) for layer in model.model.layers]
    with torch.no_grad():
        attentions = model(windows, output_attentions=True).attentions
    for handle in handles:
        handle.remove()
    massive = torch.zeros(N, SEQ, dtype=torch.bool)
    for x in outputs:
        a = x.abs().double()
        median = a.flatten(1).median(dim=1).values
        massive |= ((a > 100) & (a > 1000 * median[:, None, None])).any(dim=-1)
    return attentions, massive


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_massive_token_scores_equal_a_hand_computation(tmp_path, family_dir, corpus_jsonl):
    model_dir = family_dir("llama")  # BOS at 0 and "." planted massive
    variants = {"by_massive": {"select": "top", "k": 2, "by": "massive_tokens"}}
    run_dir, results = run_validate(
        tmp_path,
        *tiny_run_args(model_dir, corpus_jsonl, SEQ, N, 2),
        "--model.analyses.head_scores.enabled", "true",
        "--model.analyses.head_scores.received_positions", "8",
        "--model.variants", json.dumps(variants),
    )  # fmt: skip
    attentions, massive = _reference(model_dir, corpus_jsonl)
    assert bool(massive[:, 0].all()) and int(massive[:, 1:].sum()) > 0  # BOS and later tokens
    baseline = results["variants"]["baseline"]
    per_key = [a.double().mean(dim=2) for a in attentions]  # (N, H, T): mean over queries
    expected = torch.stack([(r * massive[:, None, :]).sum(-1).mean(0) for r in per_key])  # (L, H)
    got = torch.tensor(baseline["massive_token_scores"], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    first = torch.tensor(baseline["head_scores"], dtype=torch.float64)
    assert float((got - first).max()) > 1e-2  # the later massive tokens draw attention too
    torch.testing.assert_close(
        torch.tensor(baseline["attention_to_massive"], dtype=torch.float64), expected.mean(1), rtol=1e-5, atol=1e-7
    )
    received = torch.stack([r.mean(dim=(0, 1))[:8] for r in per_key])  # (L, 8)
    torch.testing.assert_close(torch.tensor(baseline["received"], dtype=torch.float64), received, rtol=1e-5, atol=1e-7)

    # a selection by massive-token score prunes the heads that ranking puts first
    top2 = ranking(got, "top")[:2]
    assert [tuple(h) for h in results["variants"]["by_massive"]["pruned_heads"]] == top2
    (config,) = [
        p
        for p in rank_heads.write_pruning_configs(run_dir / "results.json", 2, tmp_path / "p", by="massive_tokens")
        if "top" in p.name
    ]  # noqa: E501
    assert [tuple(h) for h in yaml.safe_load(config.read_text())["model"]["variants"]["prune_top2"]] == top2
    assert (run_dir / "figures" / "baseline_attention_to_massive.png").is_file()
