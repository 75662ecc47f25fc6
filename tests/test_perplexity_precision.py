"""Perplexity against the Hugging Face fixed-length recipe; precisions and overflow."""

import json
import math
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import REPO, run_validate
from lit_massive.metrics import HeadScores, LayerProfile, Perplexity
from lit_massive.toy import ToyConfig, save_toy

DEMO = str(REPO / "configs" / "demo.yaml")


def _hf_recipe_perplexity(model_dir, jsonl, seq_len, stride, n):
    """The recipe from the transformers docs ("perplexity of fixed-length models"), with
    token-weighted averaging and only full windows, as plain transformers code."""
    texts = [json.loads(line)["text"] for line in jsonl.read_text().splitlines()]
    ids = AutoTokenizer.from_pretrained(model_dir)("\n\n".join(texts), return_tensors="pt").input_ids
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
        tmp_path,
        "--model.model_name_or_path",
        str(tiny_gpt2_dir),
        "--data.data_files",
        str(corpus_jsonl),
        "--data.seq_len",
        str(seq_len),
        "--data.stride",
        str(stride),
        "--data.num_sequences",
        str(n),
        "--data.batch_size",
        "4",
    )
    ppl, nll_sum, tokens = _hf_recipe_perplexity(tiny_gpt2_dir, corpus_jsonl, seq_len, stride, n)
    baseline = results["variants"]["baseline"]
    assert baseline["scored_tokens"] == tokens == (seq_len - 1) + (n - 1) * min(stride, seq_len - 1)
    assert baseline["nll_sum"] == pytest.approx(nll_sum, rel=1e-6)
    assert baseline["perplexity"] == pytest.approx(ppl, rel=1e-6)


def _compare(a, b, path=""):
    """Every number equal to 1e-6 relative, every other value equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _compare(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _compare(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-12), path
    else:
        assert a == b, path


@pytest.mark.parametrize("streaming", ["false", "true"])
def test_two_processes_equal_one(tmp_path, corpus_jsonl, streaming):
    args = [
        "--config",
        DEMO,
        "--data.data_files",
        str(corpus_jsonl),
        "--data.streaming",
        streaming,
        "--data.num_sequences",
        "5",
        "--data.batch_size",
        "2",
        "--model.head_scores",
        "true",
        "--model.variants",
        json.dumps({"pruned": [[5, 1], [2, 7]], "low": {"select": "bottom", "k": 2}}),
    ]
    _, single = run_validate(tmp_path / "one", *args)
    root = tmp_path / "two"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lit_massive",
            "validate",
            *args,
            "--trainer.default_root_dir",
            str(root),
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "2",
            "--trainer.strategy",
            "ddp",
            "--trainer.enable_progress_bar",
            "false",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = root.glob("lightning_logs/*")
    double = json.loads((run_dir / "results.json").read_text())
    assert (single["world_size"], double["world_size"]) == (1, 2)
    assert double["variants"]["baseline"]["num_sequences"] == 5  # 3 + 2: none repeated or dropped
    _compare(double["variants"], single["variants"])


def test_bf16_mixed_stays_close_to_32_true(tmp_path):
    args = ["--config", DEMO, "--data.num_sequences", "6", "--model.head_scores", "true"]
    _, full = run_validate(tmp_path / "a", *args)
    _, bf16 = run_validate(tmp_path / "b", *args, "--trainer.precision", "bf16-mixed")
    assert (full["precision"], bf16["precision"]) == ("32-true", "bf16-mixed")
    f, b = full["variants"]["baseline"], bf16["variants"]["baseline"]
    # the tolerance the README states for bf16-mixed: 1 % on statistics and perplexity, 0.01 on head scores
    for rf, rb in zip(f["layers"], b["layers"], strict=True):
        assert rb["top"] == pytest.approx(rf["top"], rel=1e-2)
        assert rb["median"] == pytest.approx(rf["median"], rel=1e-2)
    assert b["perplexity"] == pytest.approx(f["perplexity"], rel=1e-2)
    torch.testing.assert_close(torch.tensor(b["head_scores"]), torch.tensor(f["head_scores"]), rtol=0, atol=1e-2)
    assert b["first_massive_layer"] == f["first_massive_layer"] == ToyConfig().massive_layer


def _no_nan(text: str) -> dict:
    def refuse(constant):
        raise AssertionError(f"results.json holds {constant}")

    return json.loads(text, parse_constant=refuse)


def test_float16_overflow_is_reported_not_averaged(tmp_path):
    truth = ToyConfig(massive_value=1e5)  # above float16's maximum of 65504
    model_dir = save_toy(tmp_path / "overflow_toy", truth)
    with pytest.warns(UserWarning, match="overflow"):
        run_dir, _ = run_validate(
            tmp_path,
            "--config",
            DEMO,
            "--model.model_name_or_path",
            str(model_dir),
            "--data.num_sequences",
            "4",
            "--trainer.precision",
            "16-true",
        )
    results = _no_nan((run_dir / "results.json").read_text())
    baseline = results["variants"]["baseline"]
    assert results["precision"] == "16-true"
    assert baseline["first_nonfinite_layer"] == truth.massive_layer
    for row in baseline["layers"]:
        if row["layer"] < truth.massive_layer:
            assert row["nonfinite_values"] == 0 and row["finite_sequences"] == 4
            assert all(math.isfinite(t) for t in row["top"]) and math.isfinite(row["median"])
        else:
            assert row["nonfinite_values"] > 0 and row["finite_sequences"] == 0
            assert row["top"] == [None, None, None] and row["median"] is None
    assert baseline["perplexity"] is None and baseline["nonfinite_tokens"] > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_metric_sums_stay_wide_when_the_module_is_cast(dtype):
    metrics = torch.nn.ModuleList([LayerProfile(2, 4, 8, 16), HeadScores(2, 3), Perplexity()])
    metrics.to(dtype=dtype)
    assert metrics[0].top_sum.dtype == metrics[1].score_sum.dtype == metrics[2].nll_sum.dtype == torch.float64
    assert metrics[0].count.dtype == torch.int64
