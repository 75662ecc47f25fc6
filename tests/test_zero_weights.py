"""Weight variants (`zero_weights`, `zero_random_weights`): zeroing a planted super weight
removes the massive activation it writes and changes the perplexity, a random control of the
same matrix does not, and each variant equals a plain run of a checkpoint with those weights
zeroed by hand; the model's weights are back after every pass, also after an error."""

import json
import math
import random

import pytest
import torch
from test_bad_input import _error
from test_super_weights import COL, PLANT_LAYER, ROW, SEQ, WEIGHT, _down, _plant
from transformers import AutoModelForCausalLM

from helpers import assert_same_numbers, run_validate, tiny_run_args, toy_run_args
from lit_massive.models.families import decoder_layout
from lit_massive.models.toy import ToyConfig, build_toy_model
from lit_massive.probes import hooks, probes
from lit_massive.probes.weights import ZeroedWeights

N, COUNT, SEED = 4, 50, 3
# what a variant's numbers are compared on against the hand-zeroed checkpoint's baseline
COMPARED = ("layers", "first_massive_layer", "perplexity", "bits_per_byte", "nll_sum", "super_weights", "massive")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """`planted(model_type)`: the tiny checkpoint with block 1's super weight W[ROW, COL] (test_super_weights)."""
    return lambda model_type: _plant(model_type, tmp_path_factory.mktemp(f"planted_{model_type}"))


def _variants(layer: int) -> str:
    return json.dumps(
        {
            "super": {"zero_weights": "super"},
            "random": {"zero_random_weights": {"layer": layer, "count": COUNT, "seed": SEED}},
        }
    )


def _massive_dims(entry: dict, dim: int) -> int:
    """How many located massive entries (layer, position) sit in `dim`."""
    return sum(e["dim"] == dim for e in entry["massive"])


def _drawn(rows: int, cols: int, layer: int) -> list[list[int]]:
    """The control's draw as documented: Python's random.Random(seed).sample over the
    matrix's rows x cols entries, row-major (k -> row k // cols, col k % cols)."""
    return sorted([layer, k // cols, k % cols] for k in random.Random(SEED).sample(range(rows * cols), COUNT))


def _zeroed_checkpoint(model_dir, weights: list[list[int]], out):
    """The checkpoint with W[row, col] = 0 at `weights`, by plain torch on a loaded copy."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        for layer, row, col in weights:
            _down(model, layer).weight[row, col] = 0.0  # nn.Linear: (out, in)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (model_dir / name).exists():
            (out / name).write_bytes((model_dir / name).read_bytes())
    return out


@pytest.mark.parametrize("model_type", ["llama", "gpt_neox"])
def test_zeroing_the_planted_super_weight_removes_its_massive_activation(tmp_path, planted, corpus_jsonl, model_type):
    model_dir = planted(model_type)
    args = tiny_run_args(model_dir, corpus_jsonl, SEQ, N, 2, "--model.variants", _variants(PLANT_LAYER))
    _, results = run_validate(tmp_path / "run", *args)
    base, zero, rand = (results["variants"][n] for n in ("baseline", "super", "random"))

    # `super`: the first pass found the planted weight, and it alone is zeroed
    assert zero["edit"]["to"] == "zero_weights" and zero["edit"]["weights_from"] == "super"
    found = [(w["layer"], w["row"], w["col"]) for w in zero["edit"]["weights"]]
    assert (PLANT_LAYER, ROW, COL) in found
    planted_weight = next(w for w in zero["edit"]["weights"] if (w["layer"], w["row"], w["col"]) == (1, ROW, COL))
    assert planted_weight["weight"] == WEIGHT  # its value before zeroing
    # its massive activation (dim ROW, from block 1 on) is gone; the BOS/"." plants are not
    assert _massive_dims(base, ROW) > 0 and _massive_dims(zero, ROW) == 0
    assert abs(zero["perplexity"] / base["perplexity"] - 1) > 1e-3
    # the control: as many weights of the same matrix change next to nothing
    assert rand["edit"]["weights_from"] == "random" and len(rand["edit"]["weights"]) == COUNT
    rows, cols = _down(AutoModelForCausalLM.from_pretrained(model_dir), PLANT_LAYER).weight.shape
    drawn = _drawn(rows, cols, PLANT_LAYER)
    assert [[w["layer"], w["row"], w["col"]] for w in rand["edit"]["weights"]] == drawn
    assert _massive_dims(rand, ROW) == _massive_dims(base, ROW)
    # the summed NLL moves five times less than the super weight's (which moves it by ~1 nat here)
    assert abs(rand["nll_sum"] - base["nll_sum"]) < 0.2 * abs(zero["nll_sum"] - base["nll_sum"])
    after = PLANT_LAYER + 1
    assert rand["layers"][after]["top"][0] == pytest.approx(base["layers"][after]["top"][0], rel=0.02)

    # each variant equals the baseline of a checkpoint zeroed by hand
    for name, weights in (("super", [list(w) for w in found]), ("random", drawn)):
        ckpt = _zeroed_checkpoint(model_dir, weights, tmp_path / f"ckpt_{name}")
        _, hand = run_validate(tmp_path / f"hand_{name}", *tiny_run_args(ckpt, corpus_jsonl, SEQ, N, 2))
        hand_base = hand["variants"]["baseline"]
        got = results["variants"][name]
        assert_same_numbers({k: got[k] for k in COMPARED}, {k: hand_base[k] for k in COMPARED})


def test_toy_super_weight_zeroed_by_name_or_as_super_removes_every_massive_activation(tmp_path):
    truth = ToyConfig()
    layer, dim = truth.massive_layer, truth.massive_dim
    variants = {
        "super": {"zero_weights": "super"},
        "given": {"zero_weights": [[layer, dim, 0]]},
        "random": {"zero_random_weights": {"layer": layer, "count": COUNT, "seed": SEED}},
    }
    _, results = run_validate(tmp_path, *toy_run_args("--model.variants", json.dumps(variants), n=N, batch_size=2))
    v = results["variants"]
    weight = build_toy_model().transformer.h[layer].mlp.c_proj.weight.detach()  # Conv1D: W[j, i] = weight[i, j]
    assert v["super"]["edit"]["weights"] == [{"layer": layer, "row": dim, "col": 0, "weight": float(weight[0, dim])}]
    assert_same_numbers({k: v["super"][k] for k in COMPARED}, {k: v["given"][k] for k in COMPARED})
    assert v["baseline"]["first_massive_layer"] == layer
    assert v["super"]["first_massive_layer"] is None and v["super"]["massive"] == []
    assert v["super"]["perplexity"] != v["baseline"]["perplexity"]
    cols, rows = weight.shape
    drawn = _drawn(rows, cols, layer)
    got = v["random"]["edit"]["weights"]
    assert [[w["layer"], w["row"], w["col"]] for w in got] == drawn
    assert [w["weight"] for w in got] == [float(weight[c, r]) for _, r, c in drawn]
    assert v["random"]["first_massive_layer"] == layer
    assert v["random"]["layers"][layer]["top"][0] == pytest.approx(v["baseline"]["layers"][layer]["top"][0], rel=0.01)


def test_zeroing_restores_the_weights_after_the_pass_and_after_an_error():
    """On the toy (Conv1D: W[j, i] is stored at weight[i, j]): under the probes the pass
    equals a plain pass of a copy zeroed by hand, and the weights are back afterwards."""
    truth = ToyConfig()
    model = build_toy_model().eval()
    layout = decoder_layout(model)
    down = layout.mlp_down[truth.massive_layer]
    before = down.weight.detach().clone()
    ids = torch.randint(0, 50, (2, 16))
    zeroed = ZeroedWeights(
        truth.massive_layer, torch.tensor([truth.massive_dim, 3]), torch.tensor([0, 5]), torch.full((2,), math.nan)
    )
    with torch.no_grad():
        with probes(layout, zeroed=[zeroed]):
            got = layout.backbone(input_ids=ids).last_hidden_state
        assert torch.equal(down.weight, before)
        assert zeroed.values.tolist() == [float(before[0, truth.massive_dim]), float(before[5, 3])]
        hand = build_toy_model().eval()
        hand.transformer.h[truth.massive_layer].mlp.c_proj.weight[0, truth.massive_dim] = 0.0
        hand.transformer.h[truth.massive_layer].mlp.c_proj.weight[5, 3] = 0.0
        torch.testing.assert_close(got, hand.transformer(input_ids=ids).last_hidden_state, rtol=0, atol=0)

        def boom(module, args, output):
            raise RuntimeError("stopped inside the projection")

        with pytest.raises(RuntimeError, match="stopped inside"), hooks(forward=[(down, boom)]):
            with probes(layout, zeroed=[zeroed]):
                layout.backbone(input_ids=ids)
        assert torch.equal(down.weight, before)


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ({"zero_weights": [[2, 96, 0]]}, "rows 0..95 (output channels) and cols 0..383 (input channels)"),
        ({"zero_weights": [[12, 0, 0]]}, "layer 12 out of range; valid layers are 0..11"),
        ({"zero_weights": "superb"}, "zero_weights='superb'; valid: [[layer, row, col], ...] or super"),
        ({"zero_weights": [[1, 2]]}, "zero_weights: Expected a tuple with 3 elements. Got value: [1, 2]"),
        ({"zero_random_weights": {"layer": 2, "count": 0}}, "count=0; valid: 1..36864"),
        ({"zero_random_weights": {"layer": 2}}, "zero_random_weights needs count: {zero_random_weights: {layer: 2,"),
        ({"zero_weights": "super", "set_massive": {"layer": 1, "to": "zero"}}, "{zero_weights: super}"),
    ],
)
def test_bad_weight_variants_are_one_line(tmp_path, variant, expected):
    msg = _error(tmp_path, "--model.variants", json.dumps({"v": variant}))
    assert expected in msg and ("'v'" in msg or "variants.v" in msg)


def test_a_model_without_a_down_projection_module_refuses_weight_variants(tmp_path, family_dir, corpus_jsonl):
    args = tiny_run_args(family_dir("mixtral"), corpus_jsonl, SEQ, 2, 2)
    with pytest.raises(SystemExit) as info:
        run_validate(tmp_path, *args, "--model.variants", json.dumps({"v": {"zero_weights": "super"}}))
    message = str(info.value.code)
    assert "zero_weights needs each block's MLP output projection as one module" in message and "\n" not in message
    assert not list(tmp_path.glob("lightning_logs/*"))
