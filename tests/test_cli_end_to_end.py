"""`validate` through the CLI vs an independent plain-PyTorch computation of the same windows."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import REPO, run_validate


def _independent_profile(model_dir, jsonl, seq_len, stride, n, k, thr, ratio):
    """No project code: read rows, join, tokenise, slice, forward, sort in float64."""
    texts = [json.loads(line)["text"] for line in jsonl.read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    windows = torch.tensor([ids[s * stride : s * stride + seq_len] for s in range(n)])
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    last = []
    handle = model.transformer.h[-1].register_forward_hook(lambda m, a, o: last.append(o))
    with torch.no_grad():
        hidden = model(windows, output_hidden_states=True).hidden_states
    handle.remove()
    # hidden_states[i + 1] is block i's output, except the last entry, which is after ln_f
    blocks = [*hidden[1:-1], last[0] if torch.is_tensor(last[0]) else last[0][0]]
    layers = []
    for i, x in enumerate(blocks):
        a = np.abs(x.double().numpy()).reshape(n, -1)
        desc = -np.sort(-a, axis=1)
        median = np.sort(a, axis=1)[:, (a.shape[1] - 1) // 2]
        pos, dim = np.divmod(a.argmax(axis=1), x.shape[2])
        tokens = windows.numpy()[np.arange(n), pos]

        def mode(v):
            values, counts = np.unique(v, return_counts=True)
            return int(values[counts.argmax()]), counts.max() / n

        layers.append(
            {
                "layer": i,
                "top": desc[:, :k].mean(0).tolist(),
                "median": median.mean(),
                "massive_fraction": np.mean((desc[:, 0] > thr) & (desc[:, 0] > ratio * median)),
                "dim": mode(dim),
                "position": mode(pos),
                "token": mode(tokens),
            }
        )
    return layers, tokenizer


def test_results_equal_independent_computation(tmp_path, tiny_gpt2_dir, corpus_jsonl):
    seq_len, stride, n, k, thr, ratio = 48, 40, 7, 3, 0.5, 4.0
    run_dir, results = run_validate(
        tmp_path,
        "--model.model_name_or_path",
        str(tiny_gpt2_dir),
        "--model.massive_threshold",
        str(thr),
        "--model.massive_ratio",
        str(ratio),
        "--data.data_files",
        str(corpus_jsonl),
        "--data.seq_len",
        str(seq_len),
        "--data.stride",
        str(stride),
        "--data.num_sequences",
        str(n),
        "--data.batch_size",
        "3",
    )
    layers, tokenizer = _independent_profile(tiny_gpt2_dir, corpus_jsonl, seq_len, stride, n, k, thr, ratio)
    variant = results["variants"]["baseline"]
    assert variant["num_sequences"] == n and results["data"]["num_windows"] == n
    assert results["world_size"] == 1 and results["precision"] == "32-true"
    assert len(variant["layers"]) == 3
    for got, ref in zip(variant["layers"], layers, strict=True):
        assert got["layer"] == ref["layer"]
        np.testing.assert_allclose(got["top"], ref["top"], rtol=1e-5)
        assert got["median"] == pytest.approx(ref["median"], rel=1e-5)
        assert got["top1_over_median"] == pytest.approx(ref["top"][0] / ref["median"], rel=1e-5)
        assert got["massive_fraction"] == pytest.approx(ref["massive_fraction"])
        assert (got["top1_dim"], got["top1_dim_fraction"]) == pytest.approx(ref["dim"])
        assert (got["top1_position"], got["top1_position_fraction"]) == pytest.approx(ref["position"])
        assert (got["top1_token_id"], got["top1_token_fraction"]) == pytest.approx(ref["token"])
        assert got["top1_token"] == tokenizer.decode([ref["token"][0]])
    fractions = [row["massive_fraction"] for row in layers]
    first = next((i for i, f in enumerate(fractions) if f >= 0.5), None)
    assert variant["first_massive_layer"] == first
    assert (run_dir / "config.yaml").exists()
    assert (run_dir / "figures" / "baseline_layer_profile.png").stat().st_size > 0


def test_tensorboard_has_profile_curves_figure_and_table(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, results = run_validate(
        tmp_path, "--config", str(REPO / "configs" / "demo.yaml"), "--data.num_sequences", "4"
    )
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "tensors": 0}).Reload()
    tags = events.Tags()
    top1 = events.Scalars("baseline/profile/top1")
    expected = [row["top"][0] for row in results["variants"]["baseline"]["layers"]]
    assert [e.step for e in top1] == list(range(len(expected))) and len(expected) == 12  # x axis = block
    np.testing.assert_allclose([e.value for e in top1], expected, rtol=1e-6)
    assert "baseline/profile/median" in tags["scalars"]
    assert "baseline/figures/layer_profile" in tags["images"]
    assert any(t.startswith("baseline/tables/layer_profile") for t in tags["tensors"])


def test_saved_config_runs_again_and_runs_do_not_overwrite(tmp_path):
    first, _ = run_validate(tmp_path, "--config", str(REPO / "configs" / "demo.yaml"), "--data.num_sequences", "2")
    second, results = run_validate(tmp_path, "--config", str(first / "config.yaml"))
    assert first != second and (first / "results.json").exists()
    assert results["data"]["num_windows"] == 2
