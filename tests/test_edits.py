"""Editing a block output: massive entries set to zero or to their mean, and the control."""

import json
import re

import pytest

from helpers import DEMO, REPO, run_validate, tiny_run_args
from lit_massive.models.toy import ToyConfig
from lit_massive.variants import SetRandom, parse_variants

TRUTH = ToyConfig()


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
    layer, windows = TRUTH.massive_layer, results["data"]["num_windows"]  # one massive entry per window
    assert v["control"]["edit"] == {
        "layer": layer, "to": "random", "source": None, "seed": 3, "entries": None, "note": None,
        "layers": [layer], "positions": "all",
        "blocks": [{"layer": layer, "edited": windows, "means": None, "unmatched": None}],
    }  # fmt: skip
    assert v["zero"]["edit"]["blocks"] == [{"layer": layer, "edited": windows, "means": None, "unmatched": None}]
    assert v["mean"]["edit"]["entries"] == 1 and v["mean"]["edit"]["note"] is None  # (dim 17, first)
    assert v["mean"]["edit"]["blocks"] == [{"layer": layer, "edited": windows, "means": 1, "unmatched": 0}]


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_mean_edit_from_an_earlier_runs_results(tmp_path, massive_run):
    run_dir, first = massive_run
    variants = {"mean_from": {"set_massive": {"layer": 2, "to": "mean", "from": str(run_dir / "results.json")}}}
    _, results = run_validate(
        tmp_path,
        "--config",
        DEMO,
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
        (
            {"set_massive": {"layer": 12, "to": "zero"}},
            "variant 'v': set_massive.layer=12: layer 12 out of range; valid: 0..11, a list of them, or all",
        ),
        (
            {"set_massive": {"layer": [1, 99], "to": "zero"}},
            "variant 'v': set_massive.layer=[1, 99]: layer 99 out of range; valid: 0..11, a list of them, or all",
        ),
        ({"set_random": {"layer": "every"}}, "set_random.layer='every': not a layer; valid: 0..11, a list of them"),
        ({"set_random": {"layer": []}}, "set_random.layer=[]: not a layer; valid: 0..11"),
        ({"set_massive": {"layer": 2, "to": "zero", "positions": "last"}}, "positions='last'; valid: all, first, rest"),
        ({"set_massive": {"layer": 2, "to": "mean", "from": "/no/results.json"}}, "'/no/results.json' does not exist"),
        ({"set_random": {"layer": 2, "seed": 0}, "prune_heads": [[0, 12]]}, "head 12 out of range"),
    ],
)
def test_bad_edits_fail_early(tmp_path, variant, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        run_validate(tmp_path, "--config", DEMO, "--model.variants", json.dumps({"v": variant}))


def test_mean_edit_with_nothing_massive_runs_and_says_it_changed_nothing(tmp_path, tiny_gpt2_dir, corpus_jsonl):
    """configs/massive.yaml on a model without massive activations (a small random GPT-2)."""
    with pytest.warns(UserWarning, match="nothing massive is located at layer 2"):
        run_dir, results = run_validate(
            tmp_path,
            "--config",
            str(REPO / "configs" / "massive.yaml"),
            *tiny_run_args(tiny_gpt2_dir, corpus_jsonl, 32, 4, 2),
        )
    v = results["variants"]
    assert v["baseline"]["massive"] == [] and v["baseline"]["first_massive_layer"] is None
    edit = v["mean_massive_b2"]["edit"]
    assert edit["entries"] == 0 and "changes nothing" in edit["note"]
    assert v["mean_massive_b2"]["layers"] == v["baseline"]["layers"]
    ((layer, dims),) = results["feature_view"]["massive_dims"].items()  # the largest top-1 / median
    assert dims == [] and (run_dir / "figures" / f"feature_view_layer{layer}.png").stat().st_size > 0


def test_a_layer_listed_twice_is_edited_once_and_typed_specs_parse_like_yaml():
    with pytest.warns(UserWarning, match=re.escape("set_massive.layer=[2, 1, 2]: layers [2] listed twice")):
        _, edits = parse_variants({"v": {"set_massive": {"layer": [2, 1, 2], "to": "zero"}}}, None, 12, 12)
    assert edits["v"].layer == [1, 2] and edits["v"].record(12).layers == [1, 2]
    yaml_form = {"v": {"set_random": {"layer": "all", "seed": 5, "positions": "rest"}}}
    typed = {"v": SetRandom({"layer": "all", "seed": 5, "positions": "rest"})}
    assert parse_variants(typed, None, 3, 4) == parse_variants(yaml_form, None, 3, 4)
    record = parse_variants(yaml_form, None, 3, 4)[1]["v"].record(3)
    assert (record.layer, record.layers, record.positions, record.seed) == ("all", [0, 1, 2], "rest", 5)
