"""Variant specs: typed forms, checks before any forward pass, --help and --print_config."""

import json
import re
import warnings
from dataclasses import asdict

import pytest
import torch
import yaml

from helpers import DEMO, cli_output, run_validate
from lit_massive.variants import PruneHeads, Select, SetMassive, SetRandom, parse_variants
from lit_massive.variants.edits import zero_massive


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
    with pytest.raises(SystemExit, match=re.escape(message)):
        run_validate(
            tmp_path,
            "--config",
            DEMO,
            "--model.variants",
            json.dumps(variants),
        )
    assert not calls


@pytest.mark.parametrize(
    "variants, message",
    [
        ({"v": {"select": "top"}}, "model.variants.v: select needs k: {select: top, k: 3}"),
        (
            {"v": {"set_massive": {"layer": 2}}},
            "model.variants.v: set_massive needs to: {set_massive: {layer: 2, to: zero}}",
        ),
        (
            {"v": {"selec": "top", "k": 3}},
            "model.variants.v: unknown key 'selec' (did you mean 'select'?); a variant is one of: ",
        ),
        ({"v": {"select": "top", "k": "x"}}, "model.variants.v: k='x' is not valid (expected int)"),
        ({"v": [[1]]}, "model.variants.v: [1] is not a [layer, head] pair"),
    ],
)
def test_a_variant_of_no_form_is_one_line_naming_what_is_missing(tmp_path, variants, message):
    """jsonargparse tries each form of the Union; the line names the form's missing key or the
    closest key, not every form's refusal and a Namespace dump."""
    config = tmp_path / "variants.yaml"
    config.write_text(yaml.safe_dump({"model": {"variants": variants}}))
    for given in (["--model.variants", json.dumps(variants)], ["--config", str(config)]):
        with pytest.raises(SystemExit) as info:
            run_validate(tmp_path, "--config", DEMO, *given)
        line = str(info.value.code)
        assert line.startswith("lit_massive: error: " + message), line
        assert "\n" not in line and "Namespace(" not in line and "Union subtypes" not in line


def test_duplicate_heads_are_merged_with_a_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        specs, _ = parse_variants({"v": [[1, 2], [1, 2], [3, 4]]}, None, 12, 12)
    assert specs["v"] == [(1, 2), (3, 4)]
    assert any("(1, 2) listed twice" in str(w.message) for w in caught)


FORMS = {
    "heads": [[1, 2], [3, 4]],
    "top2": {"select": "top", "k": 2, "scores": None, "by": "first_token"},
    "zero": {"set_massive": {"layer": 2, "to": "zero", "from": None}, "prune_heads": [[0, 1]]},
    "control": {"set_random": {"layer": 2, "seed": 3}, "prune_heads": []},
    "heads_only": {"prune_heads": [[5, 6]]},
}


def test_help_documents_the_variant_forms(capsys):
    text = " ".join(cli_output(capsys, "validate", "--help").split())
    for form in ("[[layer, head], ...]", "{select: top|bottom, k: N", "{set_massive: {layer: L, to: zero|mean"):
        assert form in text
    assert "{set_random: {layer: L, seed: S}" in text
    assert all(name in text for name in ("Select", "PruneHeads", "SetMassive", "SetRandom"))


def test_print_config_round_trips_every_form(tmp_path, capsys):
    printed = cli_output(capsys, "validate", "--config", DEMO, "--model.variants", json.dumps(FORMS), "--print_config")
    assert yaml.safe_load(printed)["model"]["variants"] == FORMS
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    assert cli_output(capsys, "validate", "--config", str(saved), "--print_config") == printed


def test_typed_specs_and_their_yaml_forms_parse_alike():
    typed = {
        "heads": [(1, 2), (3, 4)],
        "top2": Select("top", 2),
        "zero": SetMassive({"layer": 2, "to": "zero"}, prune_heads=[(0, 1)]),
        "control": SetRandom({"layer": 2, "seed": 3}),
        "heads_only": PruneHeads([(5, 6)]),
    }
    assert parse_variants(typed, None, 12, 12) == parse_variants(FORMS, None, 12, 12)
    assert parse_variants({"p": PruneHeads([(0, 1)])}, None, 12, 12) == ({"p": [(0, 1)]}, {})
    specs, edits = parse_variants(FORMS, None, 12, 12)
    assert specs == {
        "heads": [(1, 2), (3, 4)],
        "top2": Select("top", 2),
        "zero": [(0, 1)],
        "control": [],
        "heads_only": [(5, 6)],
    }
    rest = {"entries": None, "note": None, "layers": [2], "positions": "all", "blocks": None}
    assert [asdict(e.record(12)) for e in edits.values()] == [
        {"layer": 2, "to": "zero", "source": None, "seed": 0, **rest},
        {"layer": 2, "to": "random", "source": None, "seed": 3, **rest},
    ]


def test_an_edit_yields_the_layer_and_function_probes_take():
    x = torch.randn(2, 5, 8)
    x[0, 0, 3] = 1e4
    ((layer, fn),) = SetMassive({"layer": 1, "to": "zero"}).block_edits(12, 100.0, 1000.0, [0, 1])
    assert layer == 1 and torch.equal(fn(x), zero_massive(x, 100.0, 1000.0))
    control = SetRandom({"layer": 1, "seed": 3})
    ((_, first),) = control.block_edits(12, 100.0, 1000.0, [4, 7])
    ((_, again),) = control.block_edits(12, 100.0, 1000.0, [4, 7])
    assert torch.equal(first(x), again(x)) and int((first(x) == 0).sum()) == 1  # as many as massive ones
