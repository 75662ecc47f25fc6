"""Fake-quantized variants (`{quantize: ...}`) on a tiny Llama with a planted super weight
(test_super_weights): block 1's MLP output projection reads one input channel about 10^4
times its median on one token, so 8-bit activations with one scale per window round that
projection's other inputs to 0, while one scale per token, or keeping the massive tokens at
full precision, does not. Every number equals a fake quantization written here: hooks on the
model's own projections (activations) and weights rounded by hand (weights)."""

import json
import math

import pytest
import torch
from test_families import _assert_profile, _eager, _forward, _windows
from test_super_weights import COL, PLANT_LAYER, ROW, _plant

from helpers import run_validate, tiny_run_args

MODEL, SEQ, N = "llama", 24, 4
THR, RATIO = 100.0, 1000.0
# each linear input, by the projections that read it (the test's own names)
READERS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
           ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))  # fmt: skip
VARIANTS = {
    "a8_tensor": {"quantize": {"activations": {"bits": 8, "per": "tensor"}}},
    "a8_token": {"quantize": {"activations": {"bits": 8, "per": "token"}}},
    "a8_keep": {"quantize": {"activations": {"bits": 8, "per": "tensor"}, "keep": "massive_tokens"}},
    "w4": {"quantize": {"weights": {"bits": 4, "group": 16}, "layers": [1]}},
    "w4_keep": {"quantize": {"weights": {"bits": 4, "group": 16}, "layers": [1], "keep": "super_weights"}},
}


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory, corpus_jsonl):
    model_dir = _plant(MODEL, tmp_path_factory.mktemp("planted"))
    args = tiny_run_args(model_dir, corpus_jsonl, SEQ, N, 2, "--model.variants", json.dumps(VARIANTS))
    _, results = run_validate(tmp_path_factory.mktemp("run"), *args)
    return model_dir, results


def _rtn(x, scale, bits):
    top = 2 ** (bits - 1) - 1
    return torch.where(scale > 0, torch.clamp(torch.round(x / scale), -top, top) * scale, torch.zeros_like(x))


def _round_input(x, bits, per, keep):
    """x (B, T, C) rounded as the variant says, written without project code."""
    a = x.abs().masked_fill(keep[..., None], 0.0) if keep is not None else x.abs()
    amax = a.amax(dim=(1, 2), keepdim=True) if per == "tensor" else a.amax(dim=-1, keepdim=True)
    q = _rtn(x, amax / (2 ** (bits - 1) - 1), bits)
    return torch.where(keep[..., None], x, q) if keep is not None else q


def _reference(model_dir, windows, bits=None, per=None, keep_massive=False, weights=None):
    """Block outputs and NLL of the model with its linear inputs rounded by pre-hooks on its
    own projections (the tokens massive in each block's input kept, if asked), or with
    `weights` ({name: tensor}) loaded in place of its own."""
    model = _eager(model_dir)
    if weights:
        model.load_state_dict(weights, strict=False)
    handles, kept = [], {}
    for i, layer in enumerate(model.model.layers):
        if keep_massive:

            def note(m, args, i=i):
                a = args[0].abs()
                median = a.flatten(1).median(dim=1).values[:, None, None]
                kept[i] = ((a > THR) & (a > RATIO * median)).any(-1) if i > 0 else None

            handles.append(layer.register_forward_pre_hook(note))
        for names in READERS if bits else ():
            for name in names:

                def round_it(m, args, i=i):
                    return (_round_input(args[0], bits, per, kept.get(i)), *args[1:])

                handles.append(layer.get_submodule(name).register_forward_pre_hook(round_it))
    out = _forward(model, MODEL, windows)
    for h in handles:
        h.remove()
    return (*out, [0 if kept.get(i) is None else int(kept[i].sum()) for i in range(len(model.model.layers))])


def _round_weights(model_dir, layer, bits, group, kept=()):
    """Every linear weight of block `layer` rounded per group of `group` input columns, the
    `kept` (row, col) of its down projection exact and out of their group's scale."""
    model, out = _eager(model_dir), {}
    for name, module in model.model.layers[layer].named_modules():
        if isinstance(module, torch.nn.Linear):
            w = module.weight.detach().clone()
            keep = torch.zeros_like(w, dtype=torch.bool)
            if name == "mlp.down_proj":
                for r, c in kept:
                    keep[r, c] = True
            groups = w.abs().masked_fill(keep, 0.0).view(w.shape[0], -1, group)
            scale = (groups.amax(-1, keepdim=True) / (2 ** (bits - 1) - 1)).expand_as(groups).reshape(w.shape)
            out[f"model.layers.{layer}.{name}.weight"] = torch.where(keep, w, _rtn(w, scale, bits))
    return out


@pytest.mark.parametrize(
    "name, per, keep", [("a8_tensor", "tensor", False), ("a8_token", "token", False), ("a8_keep", "tensor", True)]
)
def test_activation_rounding_equals_hooks_on_the_projections(planted_run, corpus_jsonl, name, per, keep):
    model_dir, results = planted_run
    windows = _windows(model_dir, corpus_jsonl, True)
    outputs, _, nll, _, kept = _reference(model_dir, windows, 8, per, keep)
    entry = results["variants"][name]
    _assert_profile(entry["layers"], outputs, windows)
    assert entry["nll_sum"] == pytest.approx(nll, rel=1e-5)
    edit = entry["edit"]
    assert (edit["to"], edit["activations"], edit["weights"], edit["keep"]) == (
        "quantize", {"bits": 8, "per": per}, None, "massive_tokens" if keep else "none",
    )  # fmt: skip
    if keep:  # BOS and "." carry the planted 600 and 400 from block 0 on: kept in every later block
        assert edit["kept_tokens"] == kept and kept[1] >= N


def test_one_scale_per_window_loses_what_per_token_and_keeping_save(planted_run):
    """The planted input channel of block 1's down projection (about 10^4 x its median on the
    BOS token) sets the per-window scale: perplexity moves far more than with per-token scales
    or with the massive token kept, and its scale shows it."""
    _, results = planted_run
    v = results["variants"]
    base = v["baseline"]["perplexity"]
    moved = {name: abs(v[name]["perplexity"] - base) / base for name in ("a8_tensor", "a8_token", "a8_keep")}
    assert moved["a8_tensor"] > 10 * max(moved["a8_token"], moved["a8_keep"])  # 3.5 % against 0.09 % and 0.24 %
    scales = {name: v[name]["edit"]["activation_scales"][PLANT_LAYER]["mlp_down_in"] for name in moved}
    assert scales["a8_tensor"] > 30 * scales["a8_keep"]  # 0.50 against 0.011


@pytest.mark.parametrize("name", ["w4", "w4_keep"])
def test_weight_rounding_equals_weights_rounded_by_hand(planted_run, corpus_jsonl, name):
    model_dir, results = planted_run
    entry = results["variants"][name]
    kept = [(r, c) for _, r, c in entry["edit"]["kept_weights"] or []]
    if name == "w4_keep":
        assert entry["edit"]["kept_weights"] == [[PLANT_LAYER, ROW, COL]]  # this run's own candidate
    weights = _round_weights(model_dir, PLANT_LAYER, 4, 16, kept)
    windows = _windows(model_dir, corpus_jsonl, True)
    outputs, _, nll, _, _ = _reference(model_dir, windows, weights=weights)
    _assert_profile(entry["layers"], outputs, windows)
    assert entry["nll_sum"] == pytest.approx(nll, rel=1e-5)
    original = {k: v for k, v in _eager(model_dir).state_dict().items() if k in weights}
    num = sum(float((weights[k] - original[k]).double().square().sum()) for k in weights)
    den = sum(float(original[k].double().square().sum()) for k in weights)
    assert entry["edit"]["weight_error"] == [pytest.approx(num / den, rel=1e-5)]


def test_keeping_the_super_weight_keeps_its_massive_activation(planted_run):
    """Rounded in its group of 16, the super weight sets that group's scale and stays exact
    (round-to-nearest keeps a group's largest entry); kept out of the scale, its neighbours
    are rounded more finely: the massive activation it writes is the same in both."""
    _, results = planted_run
    v = results["variants"]
    top = {name: v[name]["layers"][PLANT_LAYER]["top"][0] for name in ("baseline", "w4", "w4_keep")}
    assert math.isclose(top["w4"], top["baseline"], rel_tol=0.05)
    assert math.isclose(top["w4_keep"], top["baseline"], rel_tol=0.05)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"quantize": {"keep": "none"}}, ["with activations or weights"]),
        ({"quantize": {"activations": {"bits": 1}}}, ["activations.bits=1", "2..16"]),
        ({"quantize": {"activations": {"bits": 8, "per": "row"}}}, ["per='row'", "tensor, token"]),
        ({"quantize": {"weights": {"bits": 4, "group": 0}}}, ["group=0", "channel or an integer >= 1"]),
        ({"quantize": {"weights": {"bits": 4}, "keep": "massive_tokens"}}, ["keep=massive_tokens", "activations"]),
        ({"quantize": {"activations": {"bits": 8}, "keep": "everything"}}, ["keep='everything'", "super_weights"]),
    ],
)
def test_bad_quantize_variants_are_one_line(tmp_path, spec, expected):
    from test_bad_input import _error

    message = _error(tmp_path, "--model.variants", json.dumps({"v": spec}))
    assert all(text in message for text in expected), message
