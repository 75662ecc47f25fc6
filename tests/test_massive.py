"""Locator, components, interventions and the feature view on the toy model's planted truth."""

import json

import pytest
import torch

from conftest import REPO, run_validate
from lit_massive.adapter import decoder_layout
from lit_massive.figures import feature_view_figure
from lit_massive.functional import massive_dims
from lit_massive.hooks import probes
from lit_massive.toy import ToyConfig, build_toy_model, build_toy_tokenizer

TRUTH = ToyConfig()
VARIANTS = {
    "zero": {"set_massive": {"layer": TRUTH.massive_layer, "to": "zero"}},
    "control": {"set_random": {"layer": TRUTH.massive_layer, "seed": 3}},
    "mean": {"set_massive": {"layer": TRUTH.massive_layer, "to": "mean"}},
}


@pytest.fixture(scope="module")
def massive_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("massive")
    return run_validate(
        root,
        "--config",
        str(REPO / "configs" / "massive.yaml"),
        "--model.model_name_or_path",
        "toy",
        "--data.dataset",
        "toy",
        "--data.seq_len",
        "128",
        "--data.num_sequences",
        "6",
        "--data.batch_size",
        "3",
        "--model.variants",
        json.dumps(VARIANTS),
    )


def test_locator_finds_the_planted_entry_from_the_planted_block_on(massive_run):
    _, results = massive_run
    found = results["variants"]["baseline"]["massive"]
    at_planted = [(e["layer"], e["fraction"]) for e in found if (e["dim"], e["position"]) == (17, 0)]
    assert at_planted == [(layer, 1.0) for layer in range(TRUTH.massive_layer, TRUTH.n_layer)]
    assert all(e["layer"] >= TRUTH.massive_layer for e in found)
    planted = next(e for e in found if (e["layer"], e["dim"], e["position"]) == (TRUTH.massive_layer, 17, 0))
    assert 0.5 * TRUTH.massive_value < planted["value"] < 1.5 * TRUTH.massive_value
    # the attention-written activation: dim 40 at every position, from the writer's block on
    written = {e["position"] for e in found if e["dim"] == TRUTH.written_dim and e["layer"] == TRUTH.writer_head[0]}
    assert written == set(range(128))


def test_components_attribute_it_to_the_planted_mlp_and_add_up(massive_run):
    _, results = massive_run
    baseline = results["variants"]["baseline"]
    entries = {e["layer"]: e for e in baseline["components"] if (e["dim"], e["position"]) == (17, 0)}
    assert sorted(entries) == list(range(TRUTH.n_layer))
    creator = entries[TRUTH.massive_layer]
    total = creator["resid_in"] + creator["attn"] + creator["mlp"]
    assert creator["mlp"] > 0.95 * total
    later = entries[TRUTH.massive_layer + 1]
    assert later["resid_in"] > 0.95 * total  # maintained by the residual stream
    located = {e["layer"]: e["value"] for e in baseline["massive"] if (e["dim"], e["position"]) == (17, 0)}
    for layer, value in located.items():  # massive in every window, so both average the same windows
        e = entries[layer]
        assert e["resid_in"] + e["attn"] + e["mlp"] == pytest.approx(value, rel=1e-5)


def test_components_add_up_to_the_hooked_block_output():
    layout = decoder_layout(build_toy_model())
    ids = torch.arange(2, 50).view(2, 24)
    with torch.no_grad(), probes(layout, components=True) as probed:
        layout.backbone(input_ids=ids)
    for i, out in enumerate(probed.block_outputs):
        parts = probed.block_inputs[i] + probed.attn_outputs[i] + probed.mlp_outputs[i]
        torch.testing.assert_close(parts, out, rtol=1e-5, atol=1e-5)
        if i:
            assert probed.block_inputs[i] is probed.block_outputs[i - 1]


def test_zeroing_changes_downstream_and_the_control_does_not(massive_run):
    _, results = massive_run
    v = results["variants"]
    zero, control, mean = (v[n]["change_vs_baseline"] for n in ("zero", "control", "mean"))
    for layer in range(TRUTH.massive_layer, TRUTH.n_layer):
        assert zero["top1_pct"][layer] < -90
        assert abs(control["top1_pct"][layer]) < 0.1
        assert abs(mean["top1_pct"][layer]) < 1  # the planted value barely varies over windows
    assert abs(zero["perplexity_pct"]) > 100 * abs(control["perplexity_pct"])
    assert abs(zero["perplexity_pct"]) > 0.01
    assert v["zero"]["massive"] == []
    assert v["control"]["edit"] == {"layer": TRUTH.massive_layer, "to": "random", "source": None, "seed": 3}


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
    x = probed.block_outputs[TRUTH.massive_layer][0].abs()
    dims = massive_dims(x, 100.0, 1000.0)
    _, ax = feature_view_figure(x.tolist(), view["tokens"], dims, "t")
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(TRUTH.massive_dim)]


def test_mean_edit_from_an_earlier_runs_results(tmp_path, massive_run):
    run_dir, first = massive_run
    variants = {"mean_from": {"set_massive": {"layer": 2, "to": "mean", "from": str(run_dir / "results.json")}}}
    _, results = run_validate(
        tmp_path,
        "--config",
        str(REPO / "configs" / "demo.yaml"),
        "--data.num_sequences",
        "6",
        "--data.batch_size",
        "3",
        "--model.variants",
        json.dumps(variants),
    )
    planted = next(
        e for e in first["variants"]["baseline"]["massive"] if (e["layer"], e["dim"], e["position"]) == (2, 17, 0)
    )
    row = results["variants"]["mean_from"]["layers"][2]
    assert row["top"][0] == pytest.approx(abs(planted["value"]), rel=1e-5)  # every window gets the mean


@pytest.mark.parametrize(
    "variant, message",
    [
        ({"set_massive": {"layer": 2, "to": "half"}}, "set_massive.to='half'; valid: zero, mean"),
        ({"set_massive": {"layer": 12, "to": "zero"}}, "layer 12 out of range; valid layers are 0..11"),
        ({"set_massive": {"layer": 2, "to": "mean", "from": "/no/results.json"}}, "'/no/results.json' does not exist"),
        ({"set_random": {"layer": 2, "seed": 0}, "prune_heads": [[0, 12]]}, "head 12 out of range"),
    ],
)
def test_bad_edits_fail_early(tmp_path, variant, message):
    with pytest.raises(SystemExit, match=message.replace(".", r"\.").replace("[", r"\[").replace("(", r"\(")):
        run_validate(
            tmp_path, "--config", str(REPO / "configs" / "demo.yaml"), "--model.variants", json.dumps({"v": variant})
        )
