"""Massive dims of q, k and v (`model.analyses.qkv_dims.enabled`), against projections' outputs rotated by each
family's own rotary embedding, written without project code; a planted model; the
aggregation over windows and processes; off by default."""

import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from attention_reference import eager_calls
from helpers import (
    assert_same_numbers,
    read_texts,
    run_validate,
    run_validate_ddp,
    tensorboard_events,
    tiny_run_args,
)
from lit_massive.analyses.qkv_dims import MassiveDims
from lit_massive.models.families import decoder_layout
from lit_massive.probes.attention import AttentionCall
from lit_massive.probes.host_reads import HostReads
from lit_massive.probes.qkv import RotaryPairs, dim_norms, qkv_norms, rotary_pairs
from tiny_families import FAMILY_CONFIGS

SEQ, N = 24, 4
RATIO = 1.5  # low, so the random tiny models have massive dims in most heads: the lists are exercised
FAST = ["gpt2", "llama", "gemma2", "qwen2", "phi", "opt"]  # test_families' fast loop: every mechanism


def _windows(model_dir, jsonl, bos):
    """The run's windows by hand: text joined by blank lines, cut into SEQ tokens (BOS + SEQ - 1)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("\n\n".join(read_texts(jsonl)), add_special_tokens=False)["input_ids"]
    n = SEQ - bos
    return torch.tensor([([tokenizer.bos_token_id] if bos else []) + ids[i * n : (i + 1) * n] for i in range(N)])


def _heads(x, hd):
    """(B, T, n * hd) -> (B, n, T, hd)."""
    return x.view(*x.shape[:2], -1, hd).transpose(1, 2)


def _keep(store, name):
    """A forward hook that keeps the module's output as `store[name]`."""

    def hook(module, args, output):
        store[name] = output

    return hook


def _projected_qkv(model, windows):
    """Per layer, (q, k, v) as (B, heads, T, hd) float64: the projections' outputs captured by
    forward hooks, q and k rotated by hand with the family's own rotary embedding and
    `apply_rotary_pos_emb` (the first cos.shape[-1] dims: partial rotary), checked against
    what each eager attention function received; and the rotary embedding (None without)."""
    cfg = model.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    base = model.base_model
    layers = base.h if hasattr(base, "h") else base.decoder.layers if hasattr(base, "decoder") else base.layers
    outputs, handles = [], []
    for layer in layers:
        attn = layer.self_attn if hasattr(layer, "self_attn") else layer.attn
        if hasattr(attn, "c_attn"):  # GPT-2: one Conv1D for q, k and v
            hook = lambda m, a, o: outputs.append(o.split(o.shape[-1] // 3, -1))  # noqa: E731
            handles.append(attn.c_attn.register_forward_hook(hook))
        else:
            captured = {}
            for name in ("q_proj", "k_proj", "v_proj"):
                handles.append(getattr(attn, name).register_forward_hook(_keep(captured, name)))
            outputs.append(captured)
    with torch.no_grad(), eager_calls(model) as calls:
        model(windows)
    for handle in handles:
        handle.remove()
    modeling = sys.modules[type(model).__module__]
    rotary = getattr(model.base_model, "rotary_emb", None)
    positions = torch.arange(windows.shape[1])[None]
    per_layer = []
    for i, out in enumerate(outputs):
        q, k, v = (out["q_proj"], out["k_proj"], out["v_proj"]) if isinstance(out, dict) else out
        q, k, v = _heads(q, hd), _heads(k, hd), _heads(v, hd)
        if cfg.model_type == "opt":  # OPT scales its queries before the attention call
            q = q * hd**-0.5
        if rotary is not None:
            cos, sin = rotary(v, positions)
            r = cos.shape[-1]
            q_rot, k_rot = modeling.apply_rotary_pos_emb(q[..., :r], k[..., :r], cos, sin)
            q, k = torch.cat([q_rot, q[..., r:]], -1), torch.cat([k_rot, k[..., r:]], -1)
        per_layer.append([t.double() for t in (q, k, v)])
        for name, mine in zip(("query", "key", "value"), (q, k, v), strict=True):  # the reference is right
            torch.testing.assert_close(mine, calls[i][name], rtol=1e-5, atol=1e-5)
    return per_layer, rotary


def _reference(x, ratio, pairs=None):
    """Over windows of x (B, heads, T, hd): mean per-dim (or per-pair) norms (heads, n), mean
    count and share (heads,), windows where each is massive (heads, n); float64, by hand."""
    norms = x.square().sum(2)  # (B, heads, hd): squared norms
    total = norms.sum(-1)
    if pairs is not None:
        norms = torch.stack([norms[..., a] + norms[..., b] for a, b in pairs], -1)
    norms = norms.sqrt()
    massive = norms > ratio * norms.mean(-1, keepdim=True)
    share = (norms.square() * massive).sum(-1) / total
    return norms.mean(0), massive.sum(-1).double().mean(0), share.mean(0), massive.sum(0)


def _check_part(got, ref, entries, windows):
    norms, count, share, hits = ref
    torch.testing.assert_close(torch.tensor(got["norms"], dtype=torch.float64), norms, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(got["count"], dtype=torch.float64), count)
    torch.testing.assert_close(torch.tensor(got["share"], dtype=torch.float64), share, rtol=1e-5, atol=1e-6)
    for h, (listed, fraction) in enumerate(zip(got[entries], got["fraction"], strict=True)):
        expected = sorted((j for j in range(hits.shape[1]) if hits[h, j] > 0), key=lambda j: (-int(hits[h, j]), j))
        assert listed == expected
        assert fraction == [int(hits[h, j]) / windows for j in expected]


@pytest.mark.parametrize("model_type", FAST)
def test_norms_per_dim_and_pair_equal_the_projections_rotated_by_the_family(
    tmp_path, family_dir, corpus_jsonl, model_type
):
    model_dir = family_dir(model_type)
    _, results = run_validate(
        tmp_path,
        *tiny_run_args(model_dir, corpus_jsonl, SEQ, N, 2),
        "--model.analyses.qkv_dims.enabled",
        "true",
        "--model.analyses.qkv_dims.massive_ratio",
        str(RATIO),
        "--model.analyses.perplexity.enabled",
        "false",
    )
    entry = results["variants"]["baseline"]
    assert results["model"]["qkv_dims"] is True and entry["qkv_massive_ratio"] == RATIO
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    per_layer, rotary = _projected_qkv(model, _windows(model_dir, corpus_jsonl, FAMILY_CONFIGS[model_type][1]))
    dims, pairs = entry["qkv_massive_dims"], entry["qk_rotary_pairs"]
    assert (pairs is None) == (rotary is None)  # GPT-2 and OPT: learned positions
    if pairs is not None:
        hd = per_layer[0][0].shape[-1]
        r = 2 * rotary.inv_freq.numel()
        assert pairs["rotary_dim"] == r and pairs["layout"] == "rotate_half"
        assert pairs["pair_dims"] == [[j, j + r // 2] for j in range(r // 2)]  # rotate_half's pairs
        assert (r < hd) is (model_type == "phi")  # partial rotary
        for row in pairs["pair_frequency"]:
            torch.testing.assert_close(torch.tensor(row, dtype=torch.float64), rotary.inv_freq.double())
    n_active = 0
    for layer, tensors in enumerate(per_layer):
        for part, x in zip("qkv", tensors, strict=True):
            got = {key: value[layer] for key, value in dims[part].items()}
            _check_part(got, _reference(x, RATIO), "dims", N)
            n_active += sum(map(len, got["dims"]))
            if pairs is not None and part != "v":
                got = {key: value[layer] for key, value in pairs[part].items()}
                _check_part(got, _reference(x, RATIO, pairs["pair_dims"]), "pairs", N)
    assert n_active > 0  # the lists were exercised


PLANTED = {  # (layer, query head or KV head, dim, factor) of the tiny Llama (head_dim 16, 8 pairs)
    "q": [(1, 2, 7, 50.0), (2, 0, 0, 100.0)],  # dim 7: pair 7, the lowest frequency; dim 0: pair 0, the highest
    "k": [(1, 1, 7, 50.0)],
}


def test_planted_query_and_key_dims_are_found_and_nothing_else(tmp_path, family_dir, corpus_jsonl):
    """One row of q_proj / k_proj scaled: at the lowest frequency (pair 7 = dims 7 and 15) RoPE
    hardly turns it in 24 positions, so dim 7 alone is massive; at the highest (pair 0 = dims
    0 and 8) it turns it by a radian per position, so both dims of the pair are, and the pair is."""
    model = AutoModelForCausalLM.from_pretrained(family_dir("llama"))
    hd = model.config.head_dim
    with torch.no_grad():
        for part, plants in PLANTED.items():
            for layer, head, dim, factor in plants:
                getattr(model.model.layers[layer].self_attn, f"{part}_proj").weight[head * hd + dim] *= factor
    model.save_pretrained(tmp_path / "planted")
    AutoTokenizer.from_pretrained(family_dir("llama")).save_pretrained(tmp_path / "planted")
    run_dir, results = run_validate(
        tmp_path,
        *tiny_run_args(tmp_path / "planted", corpus_jsonl, SEQ, N, 2),
        "--model.analyses.qkv_dims.enabled",
        "true",
        "--model.analyses.perplexity.enabled",
        "false",
    )
    entry = results["variants"]["baseline"]
    dims, pairs = entry["qkv_massive_dims"], entry["qk_rotary_pairs"]
    expected_dims = {"q": {(1, 2): [7], (2, 0): [0, 8]}, "k": {(1, 1): [7]}, "v": {}}
    expected_pairs = {"q": {(1, 2): [7], (2, 0): [0]}, "k": {(1, 1): [7]}}
    for found, expected, entries in ((dims, expected_dims, "dims"), (pairs, expected_pairs, "pairs")):
        for part, heads in expected.items():
            listed = found[part][entries]
            for layer, row in enumerate(listed):
                for head, got in enumerate(row):
                    want = heads.get((layer, head), [])
                    assert sorted(got) == want, (entries, part, layer, head)
                    assert found[part]["fraction"][layer][head] == [1.0] * len(want)
                    assert found[part]["count"][layer][head] == len(want)
            for layer, head in heads:  # the planted dims hold most of their head's norm
                assert found[part]["share"][layer][head] > 0.9
    assert pairs["pair_frequency"][1][7] == pytest.approx(10000.0 ** (-14 / 16), rel=1e-6)
    # published: a heads x dims panel per layer for q and k, and per layer the mean count over heads
    assert {"baseline_q_dim_norms.png", "baseline_k_dim_norms.png"} <= {f.name for f in (run_dir / "figures").iterdir()}
    counts = tensorboard_events(run_dir, "baseline").Scalars("qkv_dims/q_massive_count")
    assert [(e.step, e.value) for e in counts] == [(0, 0.0), (1, 0.25), (2, 0.5)]


def test_off_by_default_the_keys_are_null(tmp_path, tiny_gpt2_dir, corpus_jsonl):
    args = tiny_run_args(tiny_gpt2_dir, corpus_jsonl, 16, 2, 2, "--model.analyses.perplexity.enabled", "false")
    _, results = run_validate(tmp_path, *args)
    entry = results["variants"]["baseline"]
    assert results["model"]["qkv_dims"] is False
    for key in ("qkv_massive_dims", "qk_rotary_pairs", "qkv_massive_ratio"):
        assert key in entry and entry[key] is None


def _rotary(interleaved, rotary_dim=8, n_layer=1):
    inv_freq = 10000.0 ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    return RotaryPairs(rotary_dim, interleaved, inv_freq.expand(n_layer, -1), [{}] * n_layer, [1.0] * n_layer)


def test_pair_norms_do_not_depend_on_position_in_either_layout():
    """A pair's norm over tokens is RoPE-invariant, with GPT-J's interleaved rotation and with
    Llama's rotate_half, each applied by the family's own function, partial rotary included
    (8 of 12 dims); the other layout's pairing is not."""
    from transformers.models.gptj import modeling_gptj
    from transformers.models.llama import modeling_llama

    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 12, dtype=torch.float64)  # (B, H, T, hd)
    sincos = modeling_gptj.create_sinusoidal_positions(10, 8).double()  # (T, 8): sin | cos of 4 pairs
    sin, cos = torch.split(sincos[None], 4, dim=-1)  # as GPTJRotaryEmbedding does: (1, T, 4) each
    xt = x.transpose(1, 2)  # GPT-J rotates (B, T, H, hd)
    gptj = torch.cat([modeling_gptj.apply_rotary_pos_emb(xt[..., :8], sin, cos), xt[..., 8:]], -1).transpose(1, 2)
    angles = torch.arange(10, dtype=torch.float64)[:, None] * _rotary(False).inv_freq[0]
    emb = torch.cat([angles, angles], -1)[None]
    rot, _ = modeling_llama.apply_rotary_pos_emb(x[..., :8], x[..., :8], emb.cos(), emb.sin())
    llama = torch.cat([rot, x[..., 8:]], -1)
    for interleaved, rotated, other in ((True, gptj, llama), (False, llama, gptj)):
        pairs = _rotary(interleaved)
        before = pairs.norms(dim_norms(x))
        torch.testing.assert_close(pairs.norms(dim_norms(rotated)).double(), before.double(), rtol=1e-6, atol=1e-6)
        assert not torch.allclose(pairs.norms(dim_norms(other)).double(), before.double(), rtol=1e-3)
        assert dim_norms(rotated)[..., 8:].double().equal(dim_norms(x)[..., 8:].double())  # not rotated


def _meta_and_cpu(model_type, **kwargs):
    config = AutoConfig.for_model(model_type, vocab_size=64, max_position_embeddings=128, **kwargs)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    return meta, AutoModelForCausalLM.from_config(config)


def test_rotary_pairs_follow_the_model_per_layer_on_the_meta_device():
    """Gemma 3 rotates sliding and full layers at different bases; GPT-NeoX rotates a quarter of
    each head (rotary_pct). Read from a model on the meta device, as the run reads it."""
    meta, model = _meta_and_cpu(
        "gemma3_text",
        **FAMILY_CONFIGS["gemma3_text"][0],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 8.0},
        },
    )
    pairs = rotary_pairs(decoder_layout(meta))
    kinds = model.config.layer_types
    want = torch.stack([getattr(model.model.rotary_emb, f"{kind}_inv_freq") for kind in kinds]).double()
    torch.testing.assert_close(pairs.inv_freq, want)
    assert not torch.equal(pairs.inv_freq[0], pairs.inv_freq[1])  # sliding, then full
    assert [p["rope_type"] for p in pairs.rope_parameters] == ["default", "linear", "default"]
    assert pairs.rope_parameters[1]["factor"] == 8.0 and pairs.rotary_dim == 16
    meta, model = _meta_and_cpu("gpt_neox", **dict(FAMILY_CONFIGS["gpt_neox"][0], rotary_pct=0.25))
    pairs = rotary_pairs(decoder_layout(meta))
    assert pairs.rotary_dim == 4 and pairs.layout == "rotate_half"  # head_dim 16
    torch.testing.assert_close(pairs.inv_freq[0], model.gpt_neox.rotary_emb.inv_freq.double())
    meta, _ = _meta_and_cpu("gpt2", n_embd=32, n_head=4, n_layer=2)
    assert rotary_pairs(decoder_layout(meta)) is None


def _records(seed, n_layer=2, b=3, t=7):
    """Per layer, the `qkv_norms` of a random call (B, H=4 / H_kv=2, T, hd=16), with a massive
    dim in q head 1 and k head 0 of some windows, and a NaN window in v."""
    g = torch.Generator().manual_seed(seed)
    records = []
    for _ in range(n_layer):
        q, k, v = (torch.randn(b, h, t, 16, generator=g) for h in (4, 2, 2))
        q[: b - 1, 1, :, 3] *= 100
        k[1:, 0, :, 6] *= 100
        v[0, 1, 2, 0] = float("nan")
        records.append(qkv_norms(AttentionCall(q, k, v, None, 1.0)))
    return records


def test_the_aggregation_over_windows_and_processes_is_exact_and_reads_nothing_back():
    """Two metrics fed half the batches each and merged (the sum a process sync makes) equal
    one fed all of them; the update reads no device value on the host; a head's NaN window
    is left out of that head only."""
    rotary = _rotary(False, rotary_dim=16)
    heads = {"q": 4, "k": 2, "v": 2}
    one, first, second = (MassiveDims(2, heads, 16, 5.0, rotary) for _ in range(3))
    batches = [_records(seed) for seed in range(4)]
    with HostReads() as mode:
        for i, records in enumerate(batches):
            one.update(records)
            (first if i % 2 else second).update(records)
    assert mode.found == []
    first.merge_state(second)
    a, b = one.compute(), first.compute()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True)
    assert a["v_windows"][:, 1].tolist() == [12 - 4, 12 - 4] and a["v_windows"][:, 0].tolist() == [12, 12]
    assert a["q_hits"][0, 1, 3] == 8 and a["q_hits"][0, 1].sum() == 8  # 2 of 3 windows per batch
    assert a["k_hits"][0, 0, 6] == 8 and a["k_pairs_hits"][0, 0, 6] == 8  # dim 6: pair 6 (6, 14)
    assert a["k_hits"].sum() == a["k_pairs_hits"].sum() == 2 * 8


@pytest.mark.slow  # a DDP run: two processes
def test_two_processes_equal_one(tmp_path, family_dir, corpus_jsonl):
    args = tiny_run_args(
        family_dir("gemma2"),
        corpus_jsonl,
        SEQ,
        5,
        2,
        "--model.analyses.qkv_dims.enabled",
        "true",
        "--model.analyses.qkv_dims.massive_ratio",
        str(RATIO),
        "--model.analyses.perplexity.enabled",
        "false",
    )
    _, single = run_validate(tmp_path / "one", *args)
    double = run_validate_ddp(tmp_path / "two", *args)
    assert double["world_size"] == 2
    found = single["variants"]["baseline"]["qkv_massive_dims"]
    assert any(dims for part in found.values() for layer in part["dims"] for dims in layer)  # the lists are exercised
    assert_same_numbers(double["variants"], single["variants"])
