"""Head pruning and sweeps against independent computations and the toy model's truth."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import DEMO, reference_block_outputs, reference_profile, reference_windows, run_validate, tiny_run_args
from lit_massive.models.toy import ToyConfig
from lit_massive.variants import Sweep, parse_variants

SEQ, N = 40, 5


def _run(tmp_path, model_dir, jsonl, *args):
    return run_validate(tmp_path, *tiny_run_args(model_dir, jsonl, SEQ, N, 2, *args))[1]


def test_pruned_variant_equals_zeroed_projection_rows(tmp_path, tiny_gpt2_dir, corpus_jsonl):
    heads = [[0, 1], [2, 3]]
    results = _run(tmp_path, tiny_gpt2_dir, corpus_jsonl, "--model.variants", json.dumps({"cut": heads}))
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    hd = model.config.n_embd // model.config.n_head
    with torch.no_grad():
        for layer, head in heads:  # Conv1D weight is (in, out): a head's inputs are rows
            model.transformer.h[layer].attn.c_proj.weight[head * hd : (head + 1) * hd, :] = 0.0
    windows = reference_windows(tiny_gpt2_dir, corpus_jsonl, SEQ, SEQ, N)
    reference = reference_profile(reference_block_outputs(model, windows), windows)
    variant = results["variants"]["cut"]
    assert variant["pruned_heads"] == heads
    changed = False
    for row, ref, base in zip(variant["layers"], reference, results["variants"]["baseline"]["layers"], strict=True):
        np.testing.assert_allclose(row["top"], ref["top"], rtol=1e-5)
        assert row["median"] == pytest.approx(ref["median"], rel=1e-5)
        changed |= row["top"] != base["top"]
        pct = 100 * (row["top"][0] - base["top"][0]) / base["top"][0]
        assert variant["change_vs_baseline"]["top1_pct"][row["layer"]] == pytest.approx(pct)
    assert changed  # pruning did something: the comparison is not vacuous
    mean = np.mean(variant["change_vs_baseline"]["top1_pct"])
    assert variant["change_vs_baseline"]["mean_over_layers"]["top1_pct"] == pytest.approx(mean)


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_baseline_is_bit_identical_with_and_without_variants(tmp_path, tiny_gpt2_dir, corpus_jsonl):
    alone = _run(tmp_path / "a", tiny_gpt2_dir, corpus_jsonl, "--model.analyses.head_scores.enabled", "true")
    with_variants = _run(
        tmp_path / "b",
        tiny_gpt2_dir,
        corpus_jsonl,
        "--model.analyses.head_scores.enabled",
        "true",
        "--model.variants",
        json.dumps({"x": [[1, 1]], "y": {"select": "top", "k": 2}}),
    )
    assert with_variants["variants"]["baseline"] == alone["variants"]["baseline"]


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_toy_sink_head_and_attention_written_activation_are_recovered(tmp_path):
    truth = ToyConfig()
    variants = {"writer": [list(truth.writer_head)], "other": [[8, 0]], "top2": {"select": "top", "k": 2}}
    _, results = run_validate(
        tmp_path,
        "--config",
        DEMO,
        "--data.num_sequences",
        "6",
        "--model.analyses.head_scores.enabled",
        "true",
        "--model.variants",
        json.dumps(variants),
    )
    v = results["variants"]
    scores = torch.tensor(v["baseline"]["head_scores"])
    assert scores[truth.sink_head] > 0.95 and scores[truth.writer_head] > 0.95
    others = scores.clone()
    others[truth.sink_head] = others[truth.writer_head] = 0
    assert others.max() < 0.2
    assert sorted(map(tuple, v["top2"]["pruned_heads"])) == sorted([truth.sink_head, truth.writer_head])
    writer_layer = truth.writer_head[0]
    for name, expect_removed in (("writer", True), ("other", False)):
        for row, base in zip(v[name]["layers"], v["baseline"]["layers"], strict=True):
            assert row["top"][0] == pytest.approx(base["top"][0], rel=1e-3)  # the MLP-made one stays
            if row["layer"] >= writer_layer:
                assert base["top"][2] > 0.5 * truth.written_value  # top-2 and top-3 are the writer's
                # without it, top-2 is the position-0 flag (about 1) and top-3 an ordinary entry
                assert (row["top"][1] < 0.05 * base["top"][1]) == expect_removed, (name, row["layer"])
                assert (row["top"][2] < 0.01 * base["top"][2]) == expect_removed, (name, row["layer"])


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_sweep_expands_and_random_order_is_seeded(tmp_path):
    _, results = run_validate(
        tmp_path,
        "--config",
        DEMO,
        "--data.num_sequences",
        "2",
        "--model.sweep.order",
        "random",
        "--model.sweep.k",
        "[1, 3]",
        "--model.sweep.seed",
        "7",
    )
    assert results["sweep"]["variants"] == ["sweep_random_1", "sweep_random_3"]
    first3 = results["variants"]["sweep_random_3"]["pruned_heads"]
    assert results["variants"]["sweep_random_1"]["pruned_heads"] == first3[:1] and len(first3) == 3
    again, _ = parse_variants(None, Sweep(order="random", k=(3,), seed=7), 12, 12)
    assert [list(h) for h in again["sweep_random_3"]] == first3
    run_dir = next(tmp_path.glob("lightning_logs/*/version_*"))
    assert (run_dir / "figures" / "sweep_change_vs_k.png").exists()
