"""Head scores, head pruning and variants against independent computations."""

import json
import warnings

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import REPO, run_validate
from lit_massive.toy import ToyConfig, build_toy_model
from lit_massive.variants import Sweep, parse_variants

SEQ, N = 40, 5


def _windows(model_dir, jsonl):
    texts = [json.loads(line)["text"] for line in jsonl.read_text().splitlines()]
    ids = AutoTokenizer.from_pretrained(model_dir)("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    return torch.tensor([ids[i * SEQ : (i + 1) * SEQ] for i in range(N)])


def _run(tmp_path, model_dir, jsonl, *args):
    return run_validate(
        tmp_path,
        "--model.model_name_or_path",
        str(model_dir),
        "--data.data_files",
        str(jsonl),
        "--data.seq_len",
        str(SEQ),
        "--data.num_sequences",
        str(N),
        "--data.batch_size",
        "2",
        *args,
    )[1]


def _profile(hidden_states):
    """top-3 and lower median of |x| per window, means over windows, by sorting in float64."""
    out = []
    for x in hidden_states:
        a = np.sort(np.abs(x.double().numpy()).reshape(x.shape[0], -1), axis=1)
        out.append((a[:, ::-1][:, :3].mean(0), a[:, (a.shape[1] - 1) // 2].mean()))
    return out


def _block_outputs(model, windows):
    """Block outputs without project code: hidden_states for all but the last block."""
    last = []
    handle = model.transformer.h[-1].register_forward_hook(lambda m, a, o: last.append(o))
    with torch.no_grad():
        hidden = model(windows, output_hidden_states=True).hidden_states
    handle.remove()
    return [*hidden[1:-1], last[0] if torch.is_tensor(last[0]) else last[0][0]]


def test_head_scores_match_eager_attention(tmp_path, tiny_gpt2_dir, corpus_jsonl):
    results = _run(tmp_path, tiny_gpt2_dir, corpus_jsonl, "--model.head_scores", "true")
    assert results["model"]["attn_implementation"] == "sdpa"
    eager = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = eager(_windows(tiny_gpt2_dir, corpus_jsonl), output_attentions=True).attentions
    expected = torch.stack([a[:, :, :, 0].double().mean(-1).mean(0) for a in attentions])
    got = torch.tensor(results["variants"]["baseline"]["head_scores"], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_pruned_variant_equals_zeroed_projection_rows(tmp_path, tiny_gpt2_dir, corpus_jsonl):
    heads = [[0, 1], [2, 3]]
    results = _run(tmp_path, tiny_gpt2_dir, corpus_jsonl, "--model.variants", json.dumps({"cut": heads}))
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    hd = model.config.n_embd // model.config.n_head
    with torch.no_grad():
        for layer, head in heads:  # Conv1D weight is (in, out): a head's inputs are rows
            model.transformer.h[layer].attn.c_proj.weight[head * hd : (head + 1) * hd, :] = 0.0
    reference = _profile(_block_outputs(model, _windows(tiny_gpt2_dir, corpus_jsonl)))
    variant = results["variants"]["cut"]
    assert variant["pruned_heads"] == heads
    changed = False
    for row, (top, median), base in zip(
        variant["layers"], reference, results["variants"]["baseline"]["layers"], strict=True
    ):
        np.testing.assert_allclose(row["top"], top, rtol=1e-5)
        assert row["median"] == pytest.approx(median, rel=1e-5)
        changed |= row["top"] != base["top"]
        pct = 100 * (row["top"][0] - base["top"][0]) / base["top"][0]
        assert variant["change_vs_baseline"]["top1_pct"][row["layer"]] == pytest.approx(pct)
    assert changed  # pruning did something: the comparison is not vacuous
    mean = np.mean(variant["change_vs_baseline"]["top1_pct"])
    assert variant["change_vs_baseline"]["mean_over_layers"]["top1_pct"] == pytest.approx(mean)


def test_baseline_is_bit_identical_with_and_without_variants(tmp_path, tiny_gpt2_dir, corpus_jsonl):
    alone = _run(tmp_path / "a", tiny_gpt2_dir, corpus_jsonl, "--model.head_scores", "true")
    with_variants = _run(
        tmp_path / "b",
        tiny_gpt2_dir,
        corpus_jsonl,
        "--model.head_scores",
        "true",
        "--model.variants",
        json.dumps({"x": [[1, 1]], "y": {"select": "top", "k": 2}}),
    )
    assert with_variants["variants"]["baseline"] == alone["variants"]["baseline"]


def test_toy_sink_head_and_attention_written_activation_are_recovered(tmp_path):
    truth = ToyConfig()
    variants = {"writer": [list(truth.writer_head)], "other": [[8, 0]], "top2": {"select": "top", "k": 2}}
    _, results = run_validate(
        tmp_path,
        "--config",
        str(REPO / "configs" / "demo.yaml"),
        "--data.num_sequences",
        "6",
        "--model.head_scores",
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
                assert base["top"][1] > 0.5 * truth.written_value
                dropped = row["top"][1] < 0.01 * base["top"][1]
                assert dropped == expect_removed, (name, row["layer"])


def test_sweep_expands_and_random_order_is_seeded(tmp_path):
    _, results = run_validate(
        tmp_path,
        "--config",
        str(REPO / "configs" / "demo.yaml"),
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
    run_dir = next(tmp_path.glob("lightning_logs/*"))
    assert (run_dir / "figures" / "sweep_top1_change_vs_k.png").exists()


def test_rank_heads_writes_runnable_configs(tmp_path, capsys):
    run_dir, _ = run_validate(
        tmp_path,
        "--config",
        str(REPO / "configs" / "demo.yaml"),
        "--data.num_sequences",
        "2",
        "--model.head_scores",
        "true",
    )
    from lit_massive.cli import cli_main

    cli_main(["rank-heads", str(run_dir / "results.json"), "--k", "2"])
    table = capsys.readouterr().out
    assert "| 1 | 5 | 1 |" in table and "| 2 | 8 | 3 |" in table
    _, results = run_validate(tmp_path, "--config", str(run_dir / "pruning" / "prune_top2.yaml"))
    assert sorted(map(tuple, results["variants"]["prune_top2"]["pruned_heads"])) == [(5, 1), (8, 3)]


@pytest.mark.parametrize(
    "variants, message",
    [
        ({"v": [[12, 0]]}, "layer 12 out of range; valid layers are 0..11"),
        ({"v": [[0, 12]]}, "head 12 out of range; valid heads are 0..11"),
        ({"v": {"select": "middle", "k": 3}}, "unknown order 'middle'; valid: top, bottom"),
        ({"v": {"select": "top", "k": 145}}, "k=145 must be an integer in 1..144"),
        ({"v": {"select": "top", "k": 3, "scores": "/no/results.json"}}, "'/no/results.json' does not exist"),
        ({"baseline": [[0, 0]]}, "'baseline' is reserved"),
    ],
)
def test_bad_variants_fail_before_any_forward_pass(tmp_path, monkeypatch, variants, message):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "__call__", lambda *a, **k: calls.append(1))
    with pytest.raises(SystemExit, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        run_validate(
            tmp_path,
            "--config",
            str(REPO / "configs" / "demo.yaml"),
            "--model.variants",
            json.dumps(variants),
        )
    assert not calls


def test_duplicate_heads_are_merged_with_a_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        specs, _ = parse_variants({"v": [[1, 2], [1, 2], [3, 4]]}, None, 12, 12)
    assert specs["v"] == [(1, 2), (3, 4)]
    assert any("(1, 2) listed twice" in str(w.message) for w in caught)


def test_toy_model_is_deterministic():
    a, b = build_toy_model(), build_toy_model()
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
