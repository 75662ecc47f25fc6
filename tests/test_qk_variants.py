"""Variants that zero q/k dims inside the attention call (`zero_qk_dims`, its control
`zero_random_qk_dims`): on the toy, this run's own massive q/k dims are the planted ones of
its two first-token heads, zeroing them removes those sinks, the control (as many random
non-massive dims per head) does not, and each variant equals the baseline of a checkpoint
whose q/k projections have those outputs zeroed by hand (GPT-2: no RoPE, no q/k norm, so a
dim of q or k is one column of `c_attn`)."""

import json
import random

import pytest
from test_bad_input import _error

from helpers import assert_same_numbers, run_validate, toy_run_args
from lit_massive.models.toy import ToyConfig, build_toy_model, build_toy_tokenizer

TRUTH = ToyConfig()
N, SEED = 4, 7
HEAD_DIM = TRUTH.n_embd // TRUTH.n_head
SINKS = (TRUTH.sink_head, TRUTH.writer_head)
VARIANTS = {
    "massive": {"zero_qk_dims": {"dims": "massive"}},
    "control": {"zero_random_qk_dims": {"seed": SEED}},
    "given": {"zero_qk_dims": {"dims": [[*TRUTH.sink_head, 0]]}},
}
COMPARED = ("layers", "first_massive_layer", "perplexity", "nll_sum", "head_scores", "massive", "sink_rate")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("qk")
    args = toy_run_args(
        "--model.analyses.head_scores.enabled",
        "true",
        "--model.analyses.head_internals.enabled",
        "false",
        "--model.variants",
        json.dumps(VARIANTS),
        n=N,
    )
    return run_validate(root, *args)[1]


def _hand_edited(q_dims, k_dims, out):
    """The toy with the q and k outputs at (layer, head, dim) zeroed in its weights."""
    model, d = build_toy_model(), TRUTH.n_embd
    for offset, dims in ((0, q_dims), (d, k_dims)):
        for layer, head, dim in dims:
            attn = model.transformer.h[layer].attn
            column = offset + head * HEAD_DIM + dim  # Conv1D (in, 3d): q | k | v
            attn.c_attn.weight.data[:, column] = 0.0
            attn.c_attn.bias.data[column] = 0.0
    model.save_pretrained(out)
    build_toy_tokenizer().save_pretrained(out)
    return out


def test_the_massive_qk_dims_are_the_planted_ones_and_zeroing_them_removes_the_sinks(run):
    baseline, massive = run["variants"]["baseline"], run["variants"]["massive"]
    edit = massive["edit"]
    assert (edit["to"], edit["dims_from"], edit["note"]) == ("zero_qk_dims", "massive", None)
    # the planted query (a constant from its bias) and key (reading the massive dim) components
    for layer, head in SINKS:
        assert [layer, head, 0] in edit["q_dims"] and [layer, head, 0] in edit["k_dims"]
        assert baseline["head_scores"][layer][head] > 0.99 > 0.5 > massive["head_scores"][layer][head]
    given = run["variants"]["given"]
    assert (given["edit"]["q_dims"], given["edit"]["k_dims"]) == ([[*TRUTH.sink_head, 0]], [[*TRUTH.sink_head, 0]])
    assert given["head_scores"][TRUTH.sink_head[0]][TRUTH.sink_head[1]] < 0.5


@pytest.mark.parametrize("name", ["massive", "control"])
@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_each_variant_equals_the_hand_edited_checkpoint(run, tmp_path, name):
    entry = run["variants"][name]
    model_dir = _hand_edited(entry["edit"]["q_dims"], entry["edit"]["k_dims"], tmp_path / "edited")
    args = toy_run_args(
        "--model.analyses.head_scores.enabled", "true", "--model.analyses.head_internals.enabled", "false", n=N
    )
    args[args.index("toy")] = str(model_dir)  # the edited checkpoint, the same bundled windows
    _, edited = run_validate(tmp_path, *args)
    for key in COMPARED:
        assert_same_numbers(entry[key], edited["variants"]["baseline"][key], path=f"{name}.{key}")


def test_the_control_draws_as_many_non_massive_dims_per_head(run):
    massive, control = run["variants"]["massive"]["edit"], run["variants"]["control"]["edit"]
    assert (control["to"], control["dims_from"], control["seed"]) == ("zero_random_qk_dims", "random", SEED)
    draw = random.Random(SEED)
    for part in ("q_dims", "k_dims"):  # as documented: per head in (layer, head) order, q first
        per_head: dict[tuple[int, int], list[int]] = {}
        for layer, head, dim in massive[part]:
            per_head.setdefault((layer, head), []).append(dim)
        want = []
        for (layer, head), dims in sorted(per_head.items()):
            others = [d for d in range(HEAD_DIM) if d not in dims]
            want += [[layer, head, d] for d in sorted(draw.sample(others, len(dims)))]
        assert control[part] == want
    for layer, head in SINKS:  # the sinks stay
        assert run["variants"]["control"]["head_scores"][layer][head] > 0.99


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"zero_qk_dims": {"dims": [[99, 0, 0]]}}, ["[99, 0, 0] out of range", "layer 0..11", "dim 0..7"]),
        ({"zero_qk_dims": {"dims": "largest"}}, ["dims='largest'", "massive or [[layer, head, dim], ...]"]),
        ({"zero_qk_dims": {"layers": "all"}}, ["zero_qk_dims needs dims", "{zero_qk_dims: {dims: massive"]),
        ({"zero_qk_dims": {"dims": "massive", "layers": [12]}}, ["layer 12 out of range"]),
        ({"zero_random_qk_dims": {"seed": "x"}}, ["'x' is not valid", "expected int"]),
    ],
)
def test_bad_qk_variants_are_one_line(tmp_path, spec, expected):
    message = _error(tmp_path, "--model.variants", json.dumps({"v": spec}))
    assert all(text in message for text in expected), message
