"""Experiment 1: the feature view labels the massive dims it detects."""

import torch

from lit_massive.analyses.block_stats import massive_dims
from lit_massive.models.families import decoder_layout
from lit_massive.models.toy import ToyConfig, build_toy_model, build_toy_tokenizer
from lit_massive.probes.hooks import probes
from lit_massive.report.figures import feature_view_figure

TRUTH = ToyConfig()


def test_feature_view_labels_the_detected_dims(massive_run):
    run_dir, results = massive_run
    view = results["feature_view"]
    assert view["tokens"] == ["Summer", "is", "warm", ".", "Winter", "is", "cold", "."]
    assert view["massive_dims"] == {str(TRUTH.massive_layer): [TRUTH.massive_dim]}
    assert (run_dir / "figures" / f"feature_view_layer{TRUTH.massive_layer}.png").stat().st_size > 0
    layout = decoder_layout(build_toy_model())
    ids = build_toy_tokenizer()(view["text"], add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad(), probes(layout) as probed:
        layout.backbone(input_ids=ids)
    x = probed.block_out[TRUTH.massive_layer][0].abs()
    dims = massive_dims(x, 100.0, 1000.0)
    _, axes = feature_view_figure(x.tolist(), view["tokens"], dims, "t")
    for ax in axes:  # the 3D and the 2D view: the dims' range and the massive dim
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert str(TRUTH.massive_dim) in labels and labels[0] == "0" and labels[-1] == str(x.shape[1] - 1)
