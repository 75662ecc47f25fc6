"""Spikes at every linear input (`model.analyses.linear_inputs.enabled`): per block, the inputs of the real
projection modules (read here with plain hooks on each family's own q/k/v, output, MLP input
and MLP output projections) give the same top-1, median, location and 8-bit rounding errors,
computed by hand in float64; on the toy, the planted massive activation's MLP input makes
per-tensor rounding lose 60x more than per-token rounding."""

import math
from collections import Counter

import pytest
import torch
from test_families import _windows
from transformers import AutoModelForCausalLM

from helpers import run_validate, tiny_run_args, toy_run_args
from tiny_families import FAMILY_CONFIGS

SEQ, N = 24, 4
KINDS = ("attn_in", "attn_out_proj_in", "mlp_in", "mlp_down_in")
# per family, the linear module of each input, relative to a decoder layer (the test's own names)
PROJECTIONS = {
    "gpt2": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
    "llama": ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"),
    "gemma2": ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"),
    "opt": ("self_attn.q_proj", "self_attn.out_proj", "fc1", "fc2"),
    "phi": ("self_attn.q_proj", "self_attn.dense", "mlp.fc1", "mlp.fc2"),
}


def _layers(model):
    base = model.base_model
    return base.h if hasattr(base, "h") else (base.decoder.layers if hasattr(base, "decoder") else base.layers)


def _rtn_error(x, amax):
    scale = amax / 127
    q = torch.where(scale > 0, torch.round(x / scale) * scale, torch.zeros_like(x))
    return float(((x - q) ** 2).sum() / (x**2).sum())


def _reference(model, model_type, windows):
    """Per (kind, layer), per window: (top, channel, position, median, error per tensor, per token)."""
    out = {}
    handles = []
    for i, layer in enumerate(_layers(model)):
        for kind, path in zip(KINDS, PROJECTIONS[model_type], strict=True):
            module = layer.get_submodule(path)

            def hook(m, args, kind=kind, i=i):
                x = args[0].detach().double().reshape(windows.shape[0], -1, args[0].shape[-1])  # OPT: (B * T, C)
                rows = []
                for w in x.float():  # the probe reduces in float32
                    a = w.abs().flatten()
                    index = int(a.argmax())
                    rows.append(
                        (
                            float(a.max()),
                            index % w.shape[-1],
                            index // w.shape[-1],
                            float(a.median()),
                            _rtn_error(w.double(), w.abs().max().double()),
                            _rtn_error(w.double(), w.abs().amax(-1, keepdim=True).double()),
                        )
                    )
                out[(kind, i)] = rows

            handles.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(windows)
    for h in handles:
        h.remove()
    return out


def _mode(values):
    counts = Counter(values)
    best = min(counts, key=lambda v: (-counts[v], v))
    return best, counts[best] / len(values)


# the fast loop checks GPT-2 (Conv1D) and Llama; the full suite every family listed
@pytest.mark.parametrize(
    "model_type",
    [f if f in ("gpt2", "llama") else pytest.param(f, marks=pytest.mark.slow) for f in sorted(PROJECTIONS)],
)
def test_every_linear_input_equals_the_projections_own(tmp_path, family_dir, corpus_jsonl, model_type):
    model_dir = family_dir(model_type)
    bos = FAMILY_CONFIGS[model_type][1]
    _, results = run_validate(
        tmp_path, *tiny_run_args(model_dir, corpus_jsonl, SEQ, N, 2, "--model.analyses.linear_inputs.enabled", "true")
    )
    windows = _windows(model_dir, corpus_jsonl, bos)
    reference = _reference(AutoModelForCausalLM.from_pretrained(model_dir).eval(), model_type, windows)
    rows = results["variants"]["baseline"]["linear_inputs"]
    assert [r["layer"] for r in rows] == list(range(len(rows))) and len(rows) == 3
    for (kind, layer), per_window in reference.items():
        got = rows[layer][kind]
        top, channel, position, median, per_tensor, per_token = zip(*per_window, strict=True)
        mean = lambda v: math.fsum(v) / len(v)  # noqa: E731
        assert got["top1"] == pytest.approx(mean(top), rel=1e-5), (kind, layer)
        assert got["median"] == pytest.approx(mean(median), rel=1e-5), (kind, layer)
        if mean(median) == 0:  # OPT's fc2 reads a ReLU: most of its input is 0
            assert got["top1_over_median"] is None
        else:
            assert got["top1_over_median"] == pytest.approx(mean(top) / mean(median), rel=1e-5)
        assert got["int8_error_per_tensor"] == pytest.approx(mean(per_tensor), rel=1e-4, abs=1e-9), (kind, layer)
        assert got["int8_error_per_token"] == pytest.approx(mean(per_token), rel=1e-4, abs=1e-9), (kind, layer)
        assert (got["top1_channel"], got["top1_channel_fraction"]) == _mode(channel)
        assert (got["top1_position"], got["top1_position_fraction"]) == _mode(position)
        tokens = [int(windows[w, p]) for w, p in enumerate(position)]
        assert (got["top1_token_id"], got["top1_token_fraction"]) == _mode(tokens)


def test_the_toy_massive_mlp_input_wrecks_per_tensor_rounding_only(tmp_path):
    run_dir, results = run_validate(tmp_path, *toy_run_args("--model.analyses.linear_inputs.enabled", "true", n=4))
    rows = results["variants"]["baseline"]["linear_inputs"]
    planted = rows[2]["mlp_down_in"]  # block 2's MLP writes the massive activation (toy.py)
    assert planted["top1_position"] == 0 and planted["top1_position_fraction"] == 1.0
    assert planted["top1_over_median"] > 500
    assert planted["int8_error_per_tensor"] > 30 * planted["int8_error_per_token"]
    others = [r[kind] for r in rows for kind in KINDS if (r["layer"], kind) != (2, "mlp_down_in")]
    assert max(o["int8_error_per_tensor"] for o in others) < planted["int8_error_per_tensor"] / 10
    assert (run_dir / "figures" / "baseline_linear_inputs.png").stat().st_size > 0


def test_off_by_default_and_null_for_fused_experts(tmp_path, family_dir, corpus_jsonl):
    _, off = run_validate(tmp_path / "off", *toy_run_args(n=2))
    assert off["variants"]["baseline"]["linear_inputs"] is None
    args = tiny_run_args(
        family_dir("gpt_oss"),
        corpus_jsonl,
        SEQ,
        2,
        2,
        "--model.analyses.linear_inputs.enabled",
        "true",
        "--model.analyses.super_weights.enabled",
        "false",
    )
    _, moe = run_validate(tmp_path / "moe", *args)
    rows = moe["variants"]["baseline"]["linear_inputs"]
    assert all(r["mlp_down_in"] is None and r["mlp_in"]["top1"] > 0 for r in rows)
