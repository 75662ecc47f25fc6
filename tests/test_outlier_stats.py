"""Outlier statistics (`model.analyses.outlier_stats.enabled`) against a hand computation with
`torch.linalg.svdvals` on block outputs captured with plain forward hooks."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import reference_windows, run_validate, tensorboard_events, tiny_run_args
from lit_massive.analyses.outlier_stats import OutlierStats, block_outlier_stats

KEYS = ("kurtosis", "top_direction_share", "matrix_entropy")


def hooked_block_outputs(model: torch.nn.Module, windows: torch.Tensor) -> list[torch.Tensor]:
    """Every GPT-2 block's output (B, T, D), from forward hooks on `transformer.h[i]`."""
    out: list[torch.Tensor] = []
    handles = [
        block.register_forward_hook(lambda m, a, o: out.append(o if torch.is_tensor(o) else o[0]))
        for block in model.transformer.h
    ]
    with torch.no_grad():
        model(windows)
    for handle in handles:
        handle.remove()
    return out


def by_hand(x: torch.Tensor) -> dict[str, float]:
    """The three statistics of block output x (B, T, D), each a mean over windows, from the
    singular values in float64; windows with inf/NaN or all zero left out."""
    per_window = {key: [] for key in KEYS}
    for window in x.double():
        if not torch.isfinite(window).all() or not window.abs().sum():
            continue
        s = window.square().mean(dim=0).sqrt()  # RMS over tokens, per dim
        per_window["kurtosis"].append(float((s**4).mean() / (s**2).mean() ** 2))
        sigma2 = torch.linalg.svdvals(window) ** 2
        p = sigma2 / sigma2.sum()
        per_window["top_direction_share"].append(float(p.max()))
        nz = p[p > 0]
        per_window["matrix_entropy"].append(float(-(nz * nz.log()).sum() / math.log(min(window.shape))))
    return {key: sum(v) / len(v) if v else None for key, v in per_window.items()}


@pytest.mark.parametrize("seq_len", [16, 48])  # T < D (T x T Gram) and T > D (D x D Gram), D = 32
def test_statistics_equal_svdvals_on_hooked_block_outputs(tmp_path, tiny_gpt2_dir, corpus_jsonl, seq_len):
    n = 5
    run_dir, results = run_validate(
        tmp_path,
        *tiny_run_args(tiny_gpt2_dir, corpus_jsonl, seq_len, n, 2, "--model.analyses.outlier_stats.enabled", "true",
                       "--model.analyses.perplexity.enabled", "false", "--model.variants", '{"cut": [[1, 2], [2, 0]]}'),
    )  # fmt: skip
    windows = reference_windows(tiny_gpt2_dir, corpus_jsonl, seq_len, seq_len, n)
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    blocks = hooked_block_outputs(model, windows)
    rows = results["variants"]["baseline"]["layers"]
    assert len(rows) == len(blocks) == 3
    for row, x in zip(rows, blocks, strict=True):
        expected = by_hand(x)
        for key in KEYS:
            assert row[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-9), (row["layer"], key)
        assert row["outlier_left_out"] == 0
        assert 1.0 <= row["kurtosis"] and 0.0 < row["top_direction_share"] < 1.0 and 0.0 < row["matrix_entropy"] < 1.0
    # the layer profile's keys first, in their order, then the outlier keys
    assert list(rows[0])[:3] == ["layer", "top", "median"]
    assert list(rows[0])[-4:] == [*KEYS, "outlier_left_out"]
    cut = results["variants"]["cut"]["layers"]
    assert [r["kurtosis"] for r in cut] != [r["kurtosis"] for r in rows]  # measured per variant
    assert list(cut[0]) == list(rows[0])
    # TensorBoard: one curve per statistic against the layer; one figure against depth
    events = tensorboard_events(run_dir, "baseline")
    for key in KEYS:
        curve = events.Scalars(f"outlier_stats/{key}")
        assert [e.step for e in curve] == [0, 1, 2]
        assert [e.value for e in curve] == pytest.approx([r[key] for r in rows], rel=1e-6)
    assert (run_dir / "figures" / "baseline_outlier_stats.png").stat().st_size > 0
    assert "figures/outlier_stats" in events.Tags()["images"]


def test_off_the_row_keys_are_null(tmp_path, tiny_gpt2_dir, corpus_jsonl):
    _, results = run_validate(tmp_path, *tiny_run_args(tiny_gpt2_dir, corpus_jsonl, 16, 2, 2))
    rows = results["variants"]["baseline"]["layers"]
    assert all(row[key] is None for row in rows for key in (*KEYS, "outlier_left_out"))
    assert rows[0]["top"][0] > 0  # the profile's own keys are untouched
    assert results["model"]["outlier_stats"] is False


def test_planted_massive_activation_dominates_one_direction():
    """A block output with one huge entry: kurtosis near D, one direction holds it all."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 20, 12, generator=g)
    x[:, 0, 5] = 2000.0
    metric = OutlierStats(n_layer=1)
    metric.update([block_outlier_stats(x)])
    got = metric.compute()
    expected = by_hand(x)
    for key in KEYS:
        assert float(got[key]) == pytest.approx(expected[key], rel=1e-5)
    assert float(got["kurtosis"]) == pytest.approx(12, rel=0.01)  # one dim of 12 carries everything
    assert float(got["top_direction_share"]) > 0.999
    assert float(got["matrix_entropy"]) < 0.01


def test_nonfinite_and_zero_windows_are_left_out_and_counted():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 7, 9, generator=g), torch.randn(5, 7, 9, generator=g) * 3
    a[1, 2, 3] = float("inf")
    a[3] = 0.0
    b[4, 0, 0] = float("nan")
    metric = OutlierStats(n_layer=2)
    metric.update([block_outlier_stats(a), block_outlier_stats(b)])
    got = metric.compute()
    assert got["left_out"].tolist() == [2, 1]
    assert got["windows"].tolist() == [3, 4]
    for i, x in enumerate((a, b)):
        expected = by_hand(x)
        for key in KEYS:
            assert float(got[key][i]) == pytest.approx(expected[key], rel=1e-5)
    none = OutlierStats(n_layer=1)
    none.update([block_outlier_stats(torch.full((2, 4, 3), float("nan")))])
    assert torch.isnan(none.compute()["kurtosis"]).all()  # no window kept: NaN, null in results.json


def test_merged_halves_equal_one_pass_and_half_input_is_measured_in_float64():
    g = torch.Generator().manual_seed(3)
    blocks = [torch.randn(6, 8, 5, generator=g) for _ in range(2)]
    whole, first, second = OutlierStats(2), OutlierStats(2), OutlierStats(2)
    whole.update([block_outlier_stats(x) for x in blocks])
    first.update([block_outlier_stats(x[:2]) for x in blocks])
    second.update([block_outlier_stats(x[2:]) for x in blocks])
    first.merge_state(second)
    for key, value in whole.compute().items():
        torch.testing.assert_close(first.compute()[key], value, rtol=1e-12, atol=0)
    half = OutlierStats(2)
    half.update([block_outlier_stats(x.half()) for x in blocks])
    for i, x in enumerate(blocks):
        expected = by_hand(x.half().float())
        assert float(half.compute()["matrix_entropy"][i]) == pytest.approx(expected["matrix_entropy"], rel=1e-6)


def test_a_section_with_layers_adds_keys_to_the_existing_rows():
    from lit_massive.analyses.registry import merge_section

    entry = {"num_sequences": 2, "layers": [{"layer": 0, "top": [3.0]}, {"layer": 1, "top": [4.0]}]}
    merge_section(entry, {"layers": [{"kurtosis": 1.5}, {"kurtosis": 2.5}], "other": 7})
    assert entry == {
        "num_sequences": 2,
        "layers": [{"layer": 0, "top": [3.0], "kurtosis": 1.5}, {"layer": 1, "top": [4.0], "kurtosis": 2.5}],
        "other": 7,
    }
    with pytest.raises(ValueError, match="1 layers rows, the entry 2"):
        merge_section(entry, {"layers": [{"kurtosis": 0.0}]})
    fresh: dict = {"layers": None}  # no rows yet (the layer profile did not run): the section's rows are set
    merge_section(fresh, {"layers": [{"kurtosis": 1.0}]})
    assert fresh == {"layers": [{"kurtosis": 1.0}]}
