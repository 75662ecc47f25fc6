"""Head scores against eager attention's own probabilities."""

import torch
from transformers import AutoModelForCausalLM

from helpers import reference_windows, run_validate, tiny_run_args

SEQ, N = 40, 5


def _run(tmp_path, model_dir, jsonl, *args):
    return run_validate(tmp_path, *tiny_run_args(model_dir, jsonl, SEQ, N, 2, *args))[1]


def test_head_scores_match_eager_attention(tmp_path, tiny_gpt2_dir, corpus_jsonl):
    results = _run(tmp_path, tiny_gpt2_dir, corpus_jsonl, "--model.analyses.head_scores.enabled", "true")
    assert results["model"]["attn_implementation"] == "sdpa"
    eager = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir, attn_implementation="eager").eval()
    windows = reference_windows(tiny_gpt2_dir, corpus_jsonl, SEQ, SEQ, N)
    with torch.no_grad():
        attentions = eager(windows, output_attentions=True).attentions
    expected = torch.stack([a[:, :, :, 0].double().mean(-1).mean(0) for a in attentions])
    got = torch.tensor(results["variants"]["baseline"]["head_scores"], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
