"""Precisions: bf16 stays close to float32, float16 overflow is reported, sums stay wide."""

import json
import math

import pytest
import torch

from helpers import DEMO, run_validate
from lit_massive.analyses.head_scores import HeadScores
from lit_massive.analyses.layer_profile import LayerProfile
from lit_massive.analyses.perplexity import Perplexity
from lit_massive.models.toy import ToyConfig, save_toy


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
