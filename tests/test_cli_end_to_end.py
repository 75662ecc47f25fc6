"""`validate` through the CLI vs an independent plain-PyTorch computation of the same windows."""

import numpy as np
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import (
    DEMO,
    reference_block_outputs,
    reference_profile,
    reference_windows,
    run_validate,
    tensorboard_events,
    tiny_run_args,
)


def _mode(values, n):
    """The most frequent value and its share of n sequences."""
    found, counts = np.unique(values, return_counts=True)
    return int(found[counts.argmax()]), counts.max() / n


def test_results_equal_independent_computation(tmp_path, tiny_gpt2_dir, corpus_jsonl):
    seq_len, stride, n, k, thr, ratio = 48, 40, 7, 3, 0.5, 4.0
    run_dir, results = run_validate(
        tmp_path,
        *tiny_run_args(tiny_gpt2_dir, corpus_jsonl, seq_len, n, 3, "--data.stride", str(stride),
                       "--model.massive_threshold", str(thr), "--model.massive_ratio", str(ratio)),
    )  # fmt: skip
    windows = reference_windows(tiny_gpt2_dir, corpus_jsonl, seq_len, stride, n)
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    layers = reference_profile(reference_block_outputs(model, windows), windows, k, thr, ratio)
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    variant = results["variants"]["baseline"]
    assert variant["num_sequences"] == n and results["data"]["num_windows"] == n
    assert results["world_size"] == 1 and results["precision"] == "32-true"
    assert len(variant["layers"]) == 3
    for i, (got, ref) in enumerate(zip(variant["layers"], layers, strict=True)):
        assert got["layer"] == i
        np.testing.assert_allclose(got["top"], ref["top"], rtol=1e-5)
        assert got["median"] == pytest.approx(ref["median"], rel=1e-5)
        assert got["top1_over_median"] == pytest.approx(ref["top"][0] / ref["median"], rel=1e-5)
        assert got["massive_fraction"] == pytest.approx(ref["massive_fraction"])
        assert (got["top1_dim"], got["top1_dim_fraction"]) == pytest.approx(_mode(ref["dims"], n))
        assert (got["top1_position"], got["top1_position_fraction"]) == pytest.approx(_mode(ref["positions"], n))
        assert (got["top1_token_id"], got["top1_token_fraction"]) == pytest.approx(_mode(ref["tokens"], n))
        assert got["top1_token"] == tokenizer.decode([_mode(ref["tokens"], n)[0]])
    fractions = [row["massive_fraction"] for row in layers]
    first = next((i for i, f in enumerate(fractions) if f >= 0.5), None)
    assert variant["first_massive_layer"] == first
    assert (run_dir / "config.yaml").exists()
    assert (run_dir / "figures" / "baseline_layer_profile.png").stat().st_size > 0


def test_tensorboard_has_profile_curves_figure_and_table(tmp_path):
    import re

    from tensorboard.plugins.custom_scalar import layout_pb2

    variants = '{"cut": [[1, 0], [2, 1]]}'
    run_dir, results = run_validate(
        tmp_path, "--config", DEMO, "--data.num_sequences", "4", "--model.variants", variants
    )
    # every variant is a TensorBoard run of its own (RUN/variants/VARIANT): TensorBoard colours
    # a curve by its run, so the variants of one run get a colour each
    assert sorted(p.name for p in (run_dir / "variants").iterdir()) == ["baseline", "cut"]
    for name in ("baseline", "cut"):
        events = tensorboard_events(run_dir, name)
        tags = events.Tags()
        top1 = events.Scalars("profile/top1")
        expected = [row["top"][0] for row in results["variants"][name]["layers"]]
        assert [e.step for e in top1] == list(range(len(expected))) and len(expected) == 12  # x axis = block
        np.testing.assert_allclose([e.value for e in top1], expected, rtol=1e-6)
        assert "profile/median" in tags["scalars"]
        assert "figures/layer_profile" in tags["images"]
        assert any(t.startswith("tables/layer_profile") for t in tags["tensors"])
    change = [e.value for e in tensorboard_events(run_dir, "cut").Scalars("change/top1_pct")]
    np.testing.assert_allclose(change, results["variants"]["cut"]["change_vs_baseline"]["top1_pct"], rtol=1e-6)
    # the run itself holds what spans its variants, and nothing of one variant
    events = tensorboard_events(run_dir)
    tags = events.Tags()
    assert "compare/figures/profiles" in tags["images"]
    assert not [t for kind in ("scalars", "images") for t in tags[kind] if t.split("/")[0] in ("baseline", "cut")]
    assert "hp_metric" not in tags["scalars"]  # no stray card: nothing here is a training metric
    # Custom Scalars: charts by tag pattern, one per statistic, naming no variant (the tab
    # merges every run's layout), each matching that statistic in every variant's run
    (config,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    profile, change = layout.category
    assert [list(c.multiline.tag) for c in profile.chart] == [
        [f"^profile/{s}$"] for s in ("top1", "top2", "top3", "median")
    ]
    assert [list(c.multiline.tag) for c in change.chart] == [
        [f"^change/{s}_pct$"] for s in ("top1", "top2", "top3", "median")
    ]
    for chart, stat in zip(profile.chart, ("top1", "top2", "top3", "median"), strict=True):
        (pattern,) = chart.multiline.tag  # TensorBoard matches from the tag's start (re.match)
        for name in ("baseline", "cut"):
            scalars = tensorboard_events(run_dir, name).Tags()["scalars"]
            assert [t for t in scalars if re.match(pattern, t)] == [f"profile/{stat}"]


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_saved_config_runs_again_and_runs_do_not_overwrite(tmp_path):
    first, _ = run_validate(tmp_path, "--config", DEMO, "--data.num_sequences", "2")
    second, results = run_validate(tmp_path, "--config", str(first / "config.yaml"))
    assert first != second and (first / "results.json").exists()
    assert results["data"]["num_windows"] == 2
