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


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_bf16_mixed_stays_close_to_32_true(tmp_path):
    args = ["--config", DEMO, "--data.num_sequences", "6", "--model.analyses.head_scores.enabled", "true"]
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
            # block 2 overflows once per window (exact); from block 3 on NaN is everywhere: each
            # window's count stops at massive_candidates + 1 and says it is a lower bound
            exact = row["layer"] == truth.massive_layer
            assert row["nonfinite_values_exact"] is exact
            assert row["nonfinite_values"] == (4 if exact else 4 * (256 + 1))
            assert row["top"] == [None, None, None] and row["median"] is None
    assert baseline["perplexity"] is None and baseline["nonfinite_tokens"] > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_metric_sums_stay_wide_when_the_module_is_cast(dtype):
    metrics = torch.nn.ModuleList([LayerProfile(2, 4, 8, 16), HeadScores(2, 3), Perplexity()])
    metrics.to(dtype=dtype)
    assert metrics[0].top_sum.dtype == metrics[1].score_sum.dtype == metrics[2].nll_sum.dtype == torch.float64
    assert metrics[0].count.dtype == torch.int64


def test_inf_and_nan_are_counted_among_the_largest_values_and_flagged_beyond():
    """inf/NaN sort above every finite |value|, so the K + 1 largest hold them all while there
    are at most K + 1; beyond, the count is K + 1 per sequence and flagged."""
    from lit_massive.probes.block_stats import block_stats

    x = torch.randn(2, 6, 5)
    x[0, 1, 2], x[0, 3, 4], x[0, 5, 0] = float("inf"), float("nan"), -float("inf")  # 3 in window 0
    x[1, :4] = float("nan")  # 20 in window 1
    few = block_stats(x[:1], k=3, candidates=8, threshold=100.0, ratio=1000.0)
    assert int(few.nonfinite) == 3 and int(few.nonfinite_capped) == 0
    many = block_stats(x, k=3, candidates=8, threshold=100.0, ratio=1000.0)
    assert int(many.nonfinite) == 3 + 9 and int(many.nonfinite_capped) == 1  # window 1: the 9 largest, flagged
    assert int((~torch.isfinite(x)).sum()) == 23
