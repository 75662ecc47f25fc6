"""Edits at several blocks and by position, against hand edits with plain forward hooks.

Every reference here is written without project code: windows cut by hand, the massive
criterion and each edit (zero, the random control's draws, each window's own massive
entries set to their dim's mean) applied in `register_forward_hook`s on the decoder layers,
the profile and NLL read from the plain model."""

import json
from collections import defaultdict

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import read_texts, reference_profile, reference_windows, run_validate, tiny_run_args
from lit_massive.models.toy import save_toy
from tiny_families import BOS_DIM, DOT_DIM

SEED_STRIDE = 1_000_003  # the control's documented seed: seed * SEED_STRIDE + window index
TOY = {"seq_len": 32, "n": 4, "threshold": 20.0, "ratio": 100.0}  # low enough that block 8 on has massive "rest" too
LLAMA = {"seq_len": 24, "n": 6, "threshold": 100.0, "ratio": 1000.0}

TOY_VARIANTS = {
    "zero_all": {"set_massive": {"layer": "all", "to": "zero"}},
    "zero_first": {"set_massive": {"layer": [2, 9], "to": "zero", "positions": "first"}},
    "zero_rest": {"set_massive": {"layer": "all", "to": "zero", "positions": "rest"}},
    "random_all": {"set_random": {"layer": "all", "seed": 1}},
    "random_first": {"set_random": {"layer": [2, 9], "seed": 2, "positions": "first"}},
    "random_rest": {"set_random": {"layer": "all", "seed": 3, "positions": "rest"}},
}
LLAMA_VARIANTS = {
    "zero_first": {"set_massive": {"layer": "all", "to": "zero", "positions": "first"}},
    "zero_rest": {"set_massive": {"layer": [1, 2], "to": "zero", "positions": "rest"}},
    "random_rest": {"set_random": {"layer": "all", "seed": 4, "positions": "rest"}},
    "mean_b1": {"set_massive": {"layer": 1, "to": "mean"}},
    "mean_all": {"set_massive": {"layer": "all", "to": "mean"}},
    "mean_rest": {"set_massive": {"layer": "all", "to": "mean", "positions": "rest"}},
    "mean_first": {"set_massive": {"layer": [0, 2], "to": "mean", "positions": "first"}},
}


# ---- the reference, without project code ---------------------------------------------


def massive(x: torch.Tensor, thr: float, ratio: float) -> torch.Tensor:
    """(B, T, D) bool: |x| > thr and > ratio x the sequence's lower median (numpy, float64)."""
    a = np.abs(x.double().numpy()).reshape(x.shape[0], -1)
    median = np.sort(a, axis=1)[:, (a.shape[1] - 1) // 2]
    return torch.from_numpy((a > thr) & (a > ratio * median[:, None])).view(x.shape)


def at_positions(t: int, positions: str) -> torch.Tensor:
    """(T,) bool: all, the first, or every other position."""
    return {"all": torch.ones(t, dtype=torch.bool), "first": torch.arange(t) == 0, "rest": torch.arange(t) > 0}[
        positions
    ]


def hand_zero(positions, thr, ratio):
    def fn(x, layer, counts):
        hit = massive(x, thr, ratio) & at_positions(x.shape[1], positions)[None, :, None]
        counts["edited"][layer] += int(hit.sum())
        return x.masked_fill(hit, 0.0)

    return fn


def hand_random(seed, positions, thr, ratio):
    """Per window b: keys from a generator seeded seed * SEED_STRIDE + b, the n eligible
    (non-massive, at `positions`) entries with the smallest keys zeroed, n = massive ones there."""

    def fn(x, layer, counts):
        out = x.clone()
        hit = massive(x, thr, ratio)
        where = at_positions(x.shape[1], positions)[None, :, None].expand_as(x)
        for b in range(x.shape[0]):
            keys = torch.rand(x[b].numel(), generator=torch.Generator().manual_seed(seed * SEED_STRIDE + b),
                              dtype=torch.float64)  # fmt: skip
            n = int((hit[b] & where[b]).sum())
            eligible = torch.nonzero((~hit[b] & where[b]).flatten()).flatten()
            chosen = eligible[torch.argsort(keys[eligible])[:n]]
            out[b].view(-1)[chosen] = 0.0
            counts["edited"][layer] += len(chosen)
        return out

    return fn


def hand_mean(means, positions, thr, ratio):
    """Each entry massive in its own window (at `positions`) set to means[(layer, first|rest, dim)];
    one without a mean left as it is and counted."""

    def fn(x, layer, counts):
        out = x.clone()
        hit = massive(x, thr, ratio) & at_positions(x.shape[1], positions)[None, :, None]
        for b, t, d in torch.nonzero(hit).tolist():
            key = (layer, int(t > 0), d)
            if key in means:
                out[b, t, d] = means[key]
                counts["edited"][layer] += 1
            else:
                counts["unmatched"][layer] += 1
        return out

    return fn


def decoder_layers(model):
    return model.transformer.h if hasattr(model, "transformer") else model.model.layers


def hand_run(model, windows, fn=None, layers=()):
    """Block outputs and NLL sum with `fn` applied to each of `layers` by plain forward hooks."""
    blocks = decoder_layers(model)
    outs = [None] * len(blocks)
    counts = {"edited": defaultdict(int), "unmatched": defaultdict(int)}

    def hook(i):
        def edit(module, args, output):
            x = output[0] if isinstance(output, tuple) else output
            if fn is not None and i in layers:
                x = fn(x, i, counts)
            outs[i] = x
            return (x, *output[1:]) if isinstance(output, tuple) else x

        return edit

    handles = [block.register_forward_hook(hook(i)) for i, block in enumerate(blocks)]
    try:
        with torch.no_grad():
            loss = model(windows, labels=windows).loss
    finally:
        for handle in handles:
            handle.remove()
    nll = float(loss) * windows.shape[0] * (windows.shape[1] - 1)
    return outs, nll, counts


def hand_means(outs, thr, ratio):
    """(layer, first|rest, dim) -> the mean of every massive entry of that dim and group, over
    all windows (float64), from unedited block outputs."""
    values = defaultdict(list)
    for layer, x in enumerate(outs):
        for b, t, d in torch.nonzero(massive(x, thr, ratio)).tolist():
            values[(layer, int(t > 0), d)].append(float(x[b, t, d]))
    return {key: float(np.mean(v)) for key, v in values.items()}


def bos_windows(model_dir, jsonl, seq_len, n):
    """[bos] + seq_len - 1 text tokens, back to back."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("\n\n".join(read_texts(jsonl)), add_special_tokens=False)["input_ids"]
    m = seq_len - 1
    return torch.tensor([[tokenizer.bos_token_id, *ids[i * m : (i + 1) * m]] for i in range(n)])


def hand_edit(spec, n_layer, thr, ratio, means=None):
    """(fn, layers) of a variant spec, built by hand."""
    kind, edit = next(iter(spec.items()))
    layer, positions = edit["layer"], edit.get("positions", "all")
    layers = range(n_layer) if layer == "all" else [layer] if isinstance(layer, int) else layer
    if kind == "set_random":
        return hand_random(edit["seed"], positions, thr, ratio), list(layers)
    if edit["to"] == "zero":
        return hand_zero(positions, thr, ratio), list(layers)
    return hand_mean(means, positions, thr, ratio), list(layers)


def assert_equal_to_hand(entry, outs, nll, counts, windows, layers, to=None):
    """The variant's profile, NLL and per-block counts equal the hand edit's."""
    expected = reference_profile(outs, windows)
    for row, ref in zip(entry["layers"], expected, strict=True):
        assert row["top"] == pytest.approx(list(ref["top"]), rel=1e-5), row["layer"]
        assert row["median"] == pytest.approx(ref["median"], rel=1e-5), row["layer"]
    assert entry["nll_sum"] == pytest.approx(nll, rel=1e-5)
    blocks = entry["edit"]["blocks"]
    assert [b["layer"] for b in blocks] == layers
    assert [b["edited"] for b in blocks] == [counts["edited"][i] for i in layers]
    if to == "mean":
        assert [b["unmatched"] for b in blocks] == [counts["unmatched"][i] for i in layers]
    else:
        assert all(b["means"] is None and b["unmatched"] is None for b in blocks)


# ---- the runs --------------------------------------------------------------------------


def _run(root, model_dir, jsonl, setting, variants):
    """(run directory, results) of a run of `model_dir` with `setting`'s windows and criterion."""
    return run_validate(
        root,
        *tiny_run_args(model_dir, jsonl, setting["seq_len"], setting["n"], 2),
        "--model.massive_threshold", str(setting["threshold"]),
        "--model.massive_ratio", str(setting["ratio"]),
        "--model.variants", json.dumps(variants),
    )  # fmt: skip


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    return save_toy(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory, family_dir, corpus_jsonl):
    """The tiny Llama (BOS, planted BOS and "." massive tokens) with LLAMA_VARIANTS, and its
    model and windows made by hand."""
    model_dir = family_dir("llama")
    _, results = _run(tmp_path_factory.mktemp("llama"), model_dir, corpus_jsonl, LLAMA, LLAMA_VARIANTS)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return results, model, bos_windows(model_dir, corpus_jsonl, LLAMA["seq_len"], LLAMA["n"])


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_layer_all_and_positions_equal_a_hand_edit_on_the_toy(tmp_path, toy_dir, corpus_jsonl):
    _, results = _run(tmp_path, toy_dir, corpus_jsonl, TOY, TOY_VARIANTS)
    model = AutoModelForCausalLM.from_pretrained(toy_dir).eval()
    windows = reference_windows(toy_dir, corpus_jsonl, TOY["seq_len"], TOY["seq_len"], TOY["n"])
    thr, ratio, n_layer = TOY["threshold"], TOY["ratio"], model.config.n_layer
    base, _, _ = hand_run(model, windows)
    hit = [massive(x, thr, ratio) for x in base]
    assert hit[2][:, 0].any() and not hit[2][:, 1:].any() and hit[8][:, 1:].any()  # first and rest both occur
    for name, spec in TOY_VARIANTS.items():
        fn, layers = hand_edit(spec, n_layer, thr, ratio)
        outs, nll, counts = hand_run(model, windows, fn, layers)
        assert_equal_to_hand(results["variants"][name], outs, nll, counts, windows, layers)
        assert sum(counts["edited"].values()) > 0, name
    v = results["variants"]
    assert v["zero_all"]["change_vs_baseline"]["top1_pct"][2] < -90
    assert v["zero_rest"]["layers"][2]["top"] == v["baseline"]["layers"][2]["top"]  # block 2: first only
    # from block 8 the writer's dim is massive at every position: top-3 is one of them after position 0
    assert v["zero_rest"]["change_vs_baseline"]["top3_pct"][8] < -90


def test_layer_all_and_positions_equal_a_hand_edit_on_a_bos_family(llama_run):
    results, model, windows = llama_run
    thr, ratio, n_layer = LLAMA["threshold"], LLAMA["ratio"], model.config.num_hidden_layers
    assert results["data"]["uses_bos"]
    for name in ("zero_first", "zero_rest", "random_rest"):
        fn, layers = hand_edit(LLAMA_VARIANTS[name], n_layer, thr, ratio)
        outs, nll, counts = hand_run(model, windows, fn, layers)
        assert_equal_to_hand(results["variants"][name], outs, nll, counts, windows, layers)
        assert sum(counts["edited"].values()) > 0, name
    # zeroing the BOS row removes BOS_DIM's massive value and leaves the "." ones
    first = results["variants"]["zero_first"]["massive"]
    assert not any(e["position"] == 0 for e in first) and any(e["dim"] == DOT_DIM for e in first)


def test_mean_edits_only_each_windows_own_massive_entries(llama_run):
    """The "." tokens sit at other positions in every window: the mean edit sets the entries
    massive in that window, equal to a hand edit, and the profile stays where it was. The old
    edit (the located (dim, position) means written into every window) is computed by hand
    too, to show the test tells them apart."""
    results, model, windows = llama_run
    thr, ratio, n_layer = LLAMA["threshold"], LLAMA["ratio"], model.config.num_hidden_layers
    base, _, _ = hand_run(model, windows)
    rest = [frozenset(torch.nonzero(massive(base[1], thr, ratio)[b, 1:].any(-1)).flatten().tolist()) for b in
            range(len(windows))]  # fmt: skip
    assert len(set(rest)) > 2  # they move from window to window (some windows have none)
    means = hand_means(base, thr, ratio)
    assert {(g, d) for (layer, g, d) in means if layer == 1} == {(0, BOS_DIM), (1, DOT_DIM)}
    v = results["variants"]
    for name in ("mean_b1", "mean_all", "mean_rest", "mean_first"):
        fn, layers = hand_edit(LLAMA_VARIANTS[name], n_layer, thr, ratio, means)
        outs, nll, counts = hand_run(model, windows, fn, layers)
        assert_equal_to_hand(v[name], outs, nll, counts, windows, layers, to="mean")
        assert all(counts["edited"][i] > 0 for i in layers) and not any(counts["unmatched"].values()), name
        change = v[name]["change_vs_baseline"]
        for key in ("top1_pct", "top2_pct", "top3_pct"):
            assert max(abs(c) for c in change[key]) < 3, (name, key)
        positions = LLAMA_VARIANTS[name]["set_massive"].get("positions", "all")
        groups = {"all": (0, 1), "first": (0,), "rest": (1,)}[positions]
        assert [b["means"] for b in v[name]["edit"]["blocks"]] == [
            sum(1 for (layer, g, _) in means if layer == i and g in groups) for i in layers
        ]
    # the old edit at block 1: every located (dim, position) mean written into every window
    located = defaultdict(list)
    for b, t, d in torch.nonzero(massive(base[1], thr, ratio)).tolist():
        located[(t, d)].append(float(base[1][b, t, d]))

    def everywhere(x, layer, counts):
        out = x.clone()
        for (t, d), values in located.items():
            out[:, t, d] = float(np.mean(values))
        return out

    old, _, _ = hand_run(model, windows, everywhere, [1])
    old_top3 = reference_profile(old, windows)[1]["top"][2]
    assert 100 * (old_top3 / v["baseline"]["layers"][1]["top"][2] - 1) > 1000  # what the issue measured


def test_a_massive_entry_whose_group_has_no_mean_is_left_and_counted(tmp_path, llama_run, family_dir, corpus_jsonl):
    """Means `from:` a run whose criterion (threshold 500) found only the BOS row (600), not
    the "." ones (400): the "." entries, massive here, have no mean and stay as they are."""
    results, model, windows = llama_run
    model_dir = family_dir("llama")
    strict = dict(LLAMA, threshold=500.0)
    source, _ = _run(tmp_path / "strict", model_dir, corpus_jsonl, strict, {})
    variants = {"mean_from": {"set_massive": {"layer": "all", "to": "mean", "from": str(source / "results.json")}}}
    _, edited = _run(tmp_path / "edit", model_dir, corpus_jsonl, LLAMA, variants)
    got = edited["variants"]["mean_from"]
    thr, ratio = LLAMA["threshold"], LLAMA["ratio"]
    base, _, _ = hand_run(model, windows)
    means = hand_means(base, 500.0, ratio)
    assert {g for (_, g, _) in means} == {0}  # the first position only
    fn, layers = hand_edit(variants["mean_from"], len(base), thr, ratio, means)
    outs, nll, counts = hand_run(model, windows, fn, layers)
    assert_equal_to_hand(got, outs, nll, counts, windows, layers, to="mean")
    assert all(counts["unmatched"][i] > 0 for i in layers)
    assert got["edit"]["entries"] == len(means) and got["edit"]["note"] is None


def test_the_edit_record_names_the_layers_positions_and_blocks(llama_run):
    results, model, windows = llama_run
    v = results["variants"]
    means = hand_means(hand_run(model, windows)[0], LLAMA["threshold"], LLAMA["ratio"])
    assert v["mean_all"]["edit"] | {"blocks": None} == {
        "layer": "all", "to": "mean", "source": None, "seed": 0, "entries": len(means), "note": None,
        "layers": [0, 1, 2], "positions": "all", "blocks": None,
    }  # fmt: skip
    assert v["mean_b1"]["edit"]["layer"] == 1 and v["mean_b1"]["edit"]["layers"] == [1]
    assert v["zero_rest"]["edit"]["layer"] == [1, 2] and v["zero_rest"]["edit"]["positions"] == "rest"
    assert v["random_rest"]["edit"]["to"] == "random" and v["random_rest"]["edit"]["seed"] == 4
