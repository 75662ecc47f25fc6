"""Every supported family, against plain transformers code on tiny planted checkpoints."""

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from attention_reference import (
    eager_calls,
    entering_massive_tokens,
    gu_sink_rates,
    run_means,
    secondary_sink_overflow,
    secondary_sink_rows,
)
from helpers import read_texts, reference_profile, run_validate, tiny_run_args
from lit_massive.data import WindowsDataModule
from lit_massive.module import MassiveActivations, describe_model
from lit_massive.probes.attention import attention_probs
from tiny_families import BOS_DIM, DOT_DIM, FAMILIES, FAMILY_CONFIGS, SINK_HEAD, save_family

SEQ, N = 24, 4
# below Gu et al.'s 0.3: the random tiny heads spread attention, and at 0.15 some of them sink
# on later keys (gemma2, qwen2, gpt_oss), so the secondary sinks are tested on real rows
EPSILON = 0.15
PRUNED = (1, 1)  # (layer, head)
TILE = 5  # attention in tiles of 5 query rows: fewer than the sliding window (8), and 24 % 5 != 0
LAYERS = {"gpt2": "h", "opt": "decoder.layers"}  # else "layers", below the base model
OUT_PROJ = {"gpt2": "attn.c_proj", "gpt_neox": "attention.dense", "opt": "self_attn.out_proj", "phi": "self_attn.dense"}


def _get(module, path):
    for name in path.split("."):
        module = getattr(module, name)
    return module


def _windows(model_dir, jsonl, bos):
    """Windows built by hand: the text joined with blank lines, tokenised without special
    tokens, cut into SEQ tokens (BOS + SEQ - 1 with BOS) back to back."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("\n\n".join(read_texts(jsonl)), add_special_tokens=False)["input_ids"]
    n = SEQ - bos
    rows = [([tokenizer.bos_token_id] if bos else []) + ids[i * n : (i + 1) * n] for i in range(N)]
    return torch.tensor(rows)


def _forward(model, model_type, windows):
    """Block outputs (plain forward hooks on the decoder layers), eager attention maps, the
    summed next-token NLL of positions 1.. of every window, and what each layer's eager
    attention function received."""
    outputs = []
    layers = _get(model.base_model, LAYERS.get(model_type, "layers"))
    handles = [
        layer.register_forward_hook(lambda m, a, o: outputs.append(o[0] if isinstance(o, tuple) else o))
        for layer in layers
    ]
    with torch.no_grad(), eager_calls(model) as calls:
        out = model(windows, labels=windows, output_attentions=True)
    for handle in handles:
        handle.remove()
    nll_sum = float(out.loss) * windows.shape[0] * (windows.shape[1] - 1)
    return outputs, out.attentions, nll_sum, calls


def _assert_profile(layers, block_outputs, windows):
    for row, ref in zip(layers, reference_profile(block_outputs, windows), strict=True):
        np.testing.assert_allclose(row["top"], ref["top"], rtol=1e-5)
        assert row["median"] == pytest.approx(ref["median"], rel=1e-5)


def _eager(model_dir, prune=None):
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    if prune is not None:
        layer, head = prune
        proj = _get(
            _get(model.base_model, LAYERS.get(model.config.model_type, "layers"))[layer],
            OUT_PROJ.get(model.config.model_type, "self_attn.o_proj"),
        )
        with torch.no_grad():
            if isinstance(proj, torch.nn.Linear):  # (out, in): a head's inputs are columns
                hd = proj.in_features // model.config.num_attention_heads
                proj.weight[:, head * hd : (head + 1) * hd] = 0.0
            else:  # GPT-2's Conv1D is (in, out): rows
                hd = proj.weight.shape[0] // model.config.num_attention_heads
                proj.weight[head * hd : (head + 1) * hd, :] = 0.0
    return model


# the fast loop checks six families that between them have every mechanism (Conv1D, BOS,
# GQA, softcapping, sandwich norms, sliding and mixed sliding layers, partial rotary,
# parallel blocks, learned positions); the full suite checks all of them
FAST_FAMILIES = {
    "gpt2",
    "llama",
    "gemma2",
    "gpt_oss",
}  # the fast loop: learned positions, RoPE + GQA, sliding windows + softcap, learned sinks
EVERY_FAMILY = [f if f in FAST_FAMILIES else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES]


@pytest.mark.parametrize("model_type", EVERY_FAMILY)
def test_family_matches_plain_transformers(tmp_path, family_dir, corpus_jsonl, model_type):
    model_dir = family_dir(model_type)
    bos = FAMILY_CONFIGS[model_type][1]
    _, results = run_validate(
        tmp_path,
        *tiny_run_args(model_dir, corpus_jsonl, SEQ, N, 2),
        "--model.analyses.head_scores.enabled", "true",
        "--model.analyses.components.enabled", "true",
        "--model.variants", json.dumps({"cut": [list(PRUNED)]}),
        "--model.attention_tile", str(TILE),
        "--model.analyses.sink_rate.epsilon", str(EPSILON),
    )  # fmt: skip
    assert results["model"]["model_type"] == model_type
    assert results["data"]["uses_bos"] is bos  # bos: auto follows the tokenizer
    windows = _windows(model_dir, corpus_jsonl, bos)
    block_outputs, attentions, nll_sum, calls = _forward(_eager(model_dir), model_type, windows)
    baseline = results["variants"]["baseline"]

    # layer profile: plain forward hooks on the decoder layers
    _assert_profile(baseline["layers"], block_outputs, windows)
    # head scores: eager attention maps (GQA, RoPE, q/k norms, softcap and sliding windows included)
    expected = torch.stack([a[:, :, :, 0].double().mean(-1).mean(0) for a in attentions])
    got = torch.tensor(baseline["head_scores"], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    # inside every head: each figure from the eager call's own value, logits and weights
    assert len(calls) == len(block_outputs)
    reference = run_means(calls, entering_massive_tokens(block_outputs))
    for key, want in reference.items():
        measured = torch.tensor([[math.nan if v is None else v for v in row] for row in baseline[key]])
        torch.testing.assert_close(measured.double(), want, rtol=1e-5, atol=1e-5, equal_nan=True, msg=key)
    # secondary sinks: every (layer, token) some head sinks on at a key after the first
    overflow = secondary_sink_overflow(calls, EPSILON)
    assert baseline["secondary_sink_overflow"] == overflow
    want = secondary_sink_rows(calls, windows, entering_massive_tokens(block_outputs), EPSILON)
    got = {(r["layer"], r["token_id"]): r for r in baseline["secondary_sinks"]}
    assert set(got) <= set(want) and (overflow or set(got) == set(want))
    for key, (pairs, alpha_sum, positions, entering) in want.items() if not overflow else ():  # all kept: exact
        row = got[key]
        assert (row["pairs"], row["positions"]) == (pairs, len(positions))
        assert row["position"] == min(positions, key=lambda p: (-positions[p], p))
        assert row["mean_alpha"] == pytest.approx(alpha_sum / pairs, rel=1e-5)
        assert row["entering_massive"] == pytest.approx(entering / pairs)
    # learned sinks (gpt-oss): what the eager maps leave out of every row is the sink's share
    if model_type == "gpt_oss":
        mass = torch.stack([1 - a.double().sum(-1).mean(-1).mean(0) for a in attentions])  # (L, H)
        torch.testing.assert_close(
            torch.tensor(baseline["learned_sink_mass"], dtype=torch.float64), mass, rtol=1e-5, atol=1e-6
        )
        layer, head = SINK_HEAD
        assert (
            baseline["learned_sink_mass"][layer][head]
            > 0.9
            > max(max(row) for row in baseline["learned_sink_mass"][:layer])
        )
    else:
        assert baseline["learned_sink_mass"] is None
    # sink rates: Gu et al.'s alpha_k per window from the eager maps (sliding windows included)
    per_layer, model_rate, per_key = gu_sink_rates(calls, EPSILON, positions=16)
    assert baseline["sink_rate"] == pytest.approx(per_layer, abs=1e-6)
    assert baseline["model_sink_rate"] == pytest.approx(model_rate, abs=1e-6)
    got_keys = [[math.nan if v is None else v for v in row] for row in baseline["key_sink_rate"]]
    np.testing.assert_allclose(got_keys, [row + [math.nan] * (16 - len(row)) for row in per_key], atol=1e-6)
    # perplexity: the model's own loss over positions 1.. (BOS, when present, is never a target)
    assert baseline["scored_tokens"] == N * (SEQ - 1)
    assert baseline["nll_sum"] == pytest.approx(nll_sum, rel=1e-6)

    # pruning = zeroing that head's input columns of the output projection
    cut_outputs, _, cut_nll, _ = _forward(_eager(model_dir, prune=PRUNED), model_type, windows)
    cut = results["variants"]["cut"]
    _assert_profile(cut["layers"], cut_outputs, windows)
    assert cut["nll_sum"] == pytest.approx(cut_nll, rel=1e-6)
    assert cut["nll_sum"] != pytest.approx(baseline["nll_sum"], rel=1e-9)  # the head mattered

    # the planted massive activations are found, at position 0 (BOS) and at "." tokens
    located = {(e["dim"], e["token"]) for e in baseline["massive"]}
    assert (DOT_DIM, ".") in located
    assert ((BOS_DIM, "<|endoftext|>") in located) is bos
    # components: at each block, the entries massive at its input or output; resid_in + attn
    # + mlp = block output, averaged over the windows where the entry is massive there
    x = torch.stack(block_outputs).double()  # (L, N, T, D)
    flat = x.abs().flatten(2)
    massive = (flat > 100) & (flat > 1000 * flat.median(dim=2, keepdim=True).values)  # (L, N, T*D)
    entering = torch.cat([torch.zeros_like(massive[:1]), massive[:-1]])  # block i reads block i - 1's output
    followed = massive | entering
    got = {(e["layer"], e["position"] * x.shape[-1] + e["dim"]) for e in baseline["components"]}
    assert got and got == {(layer, j) for layer, j in followed.any(1).nonzero().tolist()}
    for e in baseline["components"]:
        hit = followed[e["layer"], :, e["position"] * x.shape[-1] + e["dim"]]  # windows followed there
        assert int(hit.sum()) == e["sequences"]
        out = float(x[e["layer"], hit, e["position"], e["dim"]].mean())
        assert e["resid_in"] + e["attn"] + e["mlp"] == pytest.approx(out, rel=1e-5, abs=1e-4)
        if e["layer"] > 0:
            assert e["resid_in"] == pytest.approx(
                float(x[e["layer"] - 1, hit, e["position"], e["dim"]].mean()), rel=1e-5, abs=1e-4
            )


def test_bos_auto_follows_the_tokenizer(family_dir):
    for model_type, adds_bos in (("llama", True), ("qwen2", False)):
        model_dir = str(family_dir(model_type))
        data = WindowsDataModule(dataset="toy", seq_len=16, num_sequences=3, model_name_or_path=model_dir)
        data.setup()
        first = data.windows[:, 0]
        assert data.uses_bos is adds_bos
        assert bool((first == 0).all()) is adds_bos  # <|endoftext|> (id 0) leads every window
        assert data.describe()["uses_bos"] is adds_bos


def test_bos_windows_and_perplexity_by_hand(tmp_path, family_dir, corpus_jsonl):
    """BOS + 11 text tokens every 6 text tokens: window i holds text tokens 6i .. 6i + 10,
    and scores only the text tokens the previous window did not: all 11 of the first, then
    the last 6 of each."""
    model_dir = family_dir("llama")
    seq_len, stride, n = 12, 6, 4
    args = tiny_run_args(model_dir, corpus_jsonl, seq_len, n, None, "--model.analyses.head_scores.enabled", "true")
    _, results = run_validate(tmp_path / "bos", *args, "--data.stride", str(stride))
    text = "\n\n".join(read_texts(corpus_jsonl))
    ids = AutoTokenizer.from_pretrained(model_dir)(text, add_special_tokens=False)["input_ids"]
    model = _eager(model_dir)
    nll_sum, tokens = 0.0, 0
    for i in range(n):
        window = torch.tensor([[0, *ids[i * stride : i * stride + seq_len - 1]]])
        labels = window.clone()
        labels[:, : 1 if i == 0 else seq_len - stride] = -100  # BOS never; overlap not twice
        scored = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            nll_sum += float(model(window, labels=labels).loss) * scored
        tokens += scored
    baseline = results["variants"]["baseline"]
    assert results["data"]["stride"] == stride and results["data"]["uses_bos"] is True
    assert baseline["scored_tokens"] == tokens == (seq_len - 1) + (n - 1) * stride
    assert baseline["nll_sum"] == pytest.approx(nll_sum, rel=1e-6)

    # bos: false on the same model: plain windows, the first token of each never scored
    _, plain = run_validate(tmp_path / "plain", *args, "--data.bos", "false")
    windows = torch.tensor([ids[i * seq_len : (i + 1) * seq_len] for i in range(n)])
    with torch.no_grad():
        expected = float(model(windows, labels=windows).loss) * n * (seq_len - 1)
    assert plain["data"]["uses_bos"] is False
    assert plain["variants"]["baseline"]["nll_sum"] == pytest.approx(expected, rel=1e-6)


def test_bfloat16_loads_weights_in_bfloat16(family_dir):
    model_dir = str(family_dir("llama"))
    full = MassiveActivations(model_name_or_path=model_dir)
    half = MassiveActivations(model_name_or_path=model_dir, dtype="bfloat16")
    assert {p.device.type for p in half.model.parameters()} == {"meta"}  # weights load in configure_model
    full.configure_model()
    half.configure_model()
    assert {p.dtype for p in full.model.parameters()} == {torch.float32}
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    nbytes = [sum(p.numel() * p.element_size() for p in m.model.parameters()) for m in (full, half)]
    assert nbytes[1] * 2 == nbytes[0]
    assert describe_model(half.model, half.layout, half.hparams)["parameter_dtype"] == "bfloat16"


def test_components_refused_where_no_sublayer_adds(tmp_path, family_dir, corpus_jsonl):
    """OPT-350m normalises after each residual sum: components cannot add up there."""
    model_dir = save_family("opt", tmp_path / "post_ln", do_layer_norm_before=False)
    with pytest.raises(SystemExit) as info:
        run_validate(
            tmp_path,
            *tiny_run_args(model_dir, corpus_jsonl, SEQ, None, None, "--model.analyses.components.enabled", "true"),
        )
    message = str(info.value.code)
    assert message.startswith("lit_massive: error: components:") and "do_layer_norm_before" in message
    assert "\n" not in message


def test_sliding_window_without_a_mask_matches_the_masks_transformers_builds():
    """Flash attention gets no mask, only `sliding_window`: the causal band built from it
    must equal the 4D masks that eager (additive) and sdpa (boolean) layers receive."""
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 12, 8), torch.randn(2, 2, 12, 8)
    i = torch.arange(12)
    band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - 5)  # (T, T), window 5
    additive = torch.zeros(12, 12).masked_fill(~band, torch.finfo(torch.float32).min)
    from_window = attention_probs(q, k, 0.3, None, sliding_window=5)
    torch.testing.assert_close(from_window, attention_probs(q, k, 0.3, band[None, None]))
    torch.testing.assert_close(from_window, attention_probs(q, k, 0.3, additive[None, None]))
    reference = ((q * 0.3) @ k.repeat_interleave(2, dim=1).transpose(-1, -2)).masked_fill(~band, -torch.inf)
    torch.testing.assert_close(from_window, reference.softmax(-1))


def test_feature_view_sees_the_text_as_the_windows_do(tmp_path, family_dir, corpus_jsonl):
    """With BOS windows the feature view puts BOS first too, so its massive dims are found;
    the planted "." dim is found at the text's full stops."""
    shown = {"text": "Summer is warm. Winter is cold.", "layers": [0, 2]}
    args = tiny_run_args(
        family_dir("llama"), corpus_jsonl, SEQ, 2, None, "--model.analyses.feature_view", json.dumps(shown)
    )
    _, results = run_validate(tmp_path, *args)
    view = results["feature_view"]
    assert view["tokens"][0] == "<|endoftext|>" and view["tokens"][1:] == "Summer is warm . Winter is cold .".split()
    assert {int(k): v for k, v in view["massive_dims"].items()} == {0: [BOS_DIM, DOT_DIM], 2: [BOS_DIM, DOT_DIM]}
