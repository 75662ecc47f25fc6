"""The super-weight locator (analysis `super_weights`): planted super weights are found in
tiny checkpoints of three families and in the toy, and every number equals a hand
computation from plain forward hooks on the MLP output projection."""

import json
from collections import Counter
from unittest import mock

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import read_texts, run_validate, tiny_run_args, toy_run_args
from lit_massive.analyses.super_weights import TABLE_ROWS, candidates_table
from lit_massive.figures import weight_figures
from lit_massive.models.families import decoder_layout
from lit_massive.models.toy import ToyConfig, build_toy_model
from lit_massive.module import MassiveActivations
from lit_massive.probes import Needs, probes
from lit_massive.probes.host_reads import HostReads
from tiny_families import BOS_DIM, DOT_DIM, FAMILIES, FAMILY_CONFIGS, save_family

SEQ, N = 24, 4
LAYERS = {"gpt2": "h", "opt": "decoder.layers"}  # else "layers", below the base model
# the MLP output projection (whose weight holds the super weight) and the projection feeding
# its input, named here without project code
DOWN = {"gpt2": "mlp.c_proj", "gpt_neox": "mlp.dense_4h_to_h", "opt": "fc2", "phi": "mlp.fc2"}
UP = {"llama": ("mlp.gate_proj", "mlp.up_proj"), "opt": ("fc1",), "gpt_neox": ("mlp.dense_h_to_4h",)}
PLANT_LAYER, ROW, COL, WEIGHT = 1, 30, 50, 50.0  # W[30, 50] = 50 in block 1's output projection
THR, RATIO = 100.0, 1000.0


def _get(module, path):
    for name in path.split("."):
        module = getattr(module, name)
    return module


def _layers(model):
    return _get(model.base_model, LAYERS.get(model.config.model_type, "layers"))


def _down(model, layer):
    return _get(_layers(model)[layer], DOWN.get(model.config.model_type, "mlp.down_proj"))


def _plant(model_type: str, directory):
    """A tiny checkpoint with a super weight: block 1's MLP channel COL reads only the planted
    dim (BOS_DIM on the BOS token with BOS, else DOT_DIM on "."), so its input is large there,
    and the output projection's W[ROW, COL] = WEIGHT turns it into a massive output at dim ROW."""
    save_family(model_type, directory)
    model = AutoModelForCausalLM.from_pretrained(directory)
    dim = BOS_DIM if FAMILY_CONFIGS[model_type][1] else DOT_DIM
    block = _layers(model)[PLANT_LAYER]
    with torch.no_grad():
        for name in UP[model_type]:
            up = _get(block, name)
            up.weight[COL] = 0.0
            up.weight[COL, dim] = 1.0 if model_type == "llama" else 10.0
            if up.bias is not None:
                up.bias[COL] = 0.0
        _down(model, PLANT_LAYER).weight[ROW, COL] = WEIGHT
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    made = {}

    def get(model_type):
        if model_type not in made:
            made[model_type] = _plant(model_type, tmp_path_factory.mktemp(f"planted_{model_type}"))
        return made[model_type]

    return get


def _windows(model_dir, jsonl, bos):
    """Windows by hand: text joined with blank lines, tokenised without special tokens, cut
    back to back into SEQ tokens (BOS + SEQ - 1 with BOS)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("\n\n".join(read_texts(jsonl)), add_special_tokens=False)["input_ids"]
    n = SEQ - bos
    return torch.tensor([([tokenizer.bos_token_id] if bos else []) + ids[i * n : (i + 1) * n] for i in range(N)])


def _hand(model, windows):
    """Plain forward hooks on every block (its output) and on every output projection (its
    input and output), as (N, T, .) float64 arrays per block."""
    blocks, ins, outs = [], [], []
    n = windows.shape[0]
    handles = [layer.register_forward_hook(lambda m, a, o: blocks.append(o[0] if isinstance(o, tuple) else o))
               for layer in _layers(model)]  # fmt: skip

    def keep(module, args, output):
        ins.append(args[0])
        outs.append(output)

    handles += [_down(model, i).register_forward_hook(keep) for i in range(len(_layers(model)))]
    with torch.no_grad():
        model(windows)
    for handle in handles:
        handle.remove()

    def arr(ts):  # OPT runs its MLP on (N * T, .)
        return [t.detach().double().numpy().reshape(n, -1, t.shape[-1]) for t in ts]

    return arr(blocks), arr(ins), arr(outs)


def _top1(x):
    """Per window of x (N, T, C): (signed value, channel, position) of the largest |value|."""
    flat = np.abs(x).reshape(x.shape[0], -1)
    index = flat.argmax(axis=1)
    position, channel = np.divmod(index, x.shape[2])
    return x.reshape(x.shape[0], -1)[np.arange(len(index)), index], channel, position


def _expected_side(values, channels, positions, tokens):
    """A block's entry by hand: mean largest |value|; the (channel, position) most often holding
    it, lowest on a tie; its windows, mean signed value and token (most often, lowest on a tie)."""
    pairs = Counter(zip(channels.tolist(), positions.tolist(), strict=True))
    where = min(pairs, key=lambda p: (-pairs[p], p))
    there = (channels == where[0]) & (positions == where[1])
    token_counts = Counter(tokens[there].tolist())
    return {
        "value": float(np.abs(values).mean()),
        "channel": where[0],
        "position": where[1],
        "token_id": min(token_counts, key=lambda t: (-token_counts[t], t)),
        "windows": int(there.sum()),
        "signed_value": float(values[there].mean()),
    }


def _expected(model, windows):
    """Per block input and output entries and the candidates, from plain hooks."""
    blocks, ins, outs = _hand(model, windows)
    ids = windows.numpy()
    rows, candidates = [], {}
    for layer, (b, x, y) in enumerate(zip(blocks, ins, outs, strict=True)):
        n = x.shape[0]
        in_v, in_c, in_p = _top1(x)
        out_v, out_c, out_p = _top1(y)
        output = _expected_side(out_v, out_c, out_p, ids[np.arange(n), out_p])
        a = np.abs(b).reshape(n, -1)
        median = np.sort(a, axis=1)[:, (a.shape[1] - 1) // 2]  # the block output's lower median
        massive = (np.abs(out_v) > THR) & (np.abs(out_v) > RATIO * median)
        output["massive_windows"] = int(massive.sum())
        rows.append({"layer": layer, "input": _expected_side(in_v, in_c, in_p, ids[np.arange(n), in_p]),
                     "output": output})  # fmt: skip
        weight = _down(model, layer).weight.detach().double().numpy()
        for w in np.flatnonzero(massive):
            col = int(np.abs(x[w, out_p[w]]).argmax())
            j = int(out_c[w])
            value = weight[j, col] if isinstance(_down(model, layer), torch.nn.Linear) else weight[col, j]
            candidates.setdefault((layer, j, col), []).append((value, x[w, out_p[w], col], out_v[w]))
    return rows, candidates


def _assert_side(got, want):
    for key in ("channel", "position", "token_id", "windows"):
        assert got[key] == want[key], key
    assert got["value"] == pytest.approx(want["value"], rel=1e-5)
    assert got["signed_value"] == pytest.approx(want["signed_value"], rel=1e-5)


def _assert_entry(entry, rows, candidates):
    assert len(entry["mlp_down"]) == len(rows)
    for got, want in zip(entry["mlp_down"], rows, strict=True):
        assert got["layer"] == want["layer"]
        _assert_side(got["input"], want["input"])
        _assert_side(got["output"], want["output"])
        assert got["output"]["massive_windows"] == want["output"]["massive_windows"]
    found = {(c["layer"], c["row"], c["col"]): c for c in entry["super_weights"]}
    assert found.keys() == candidates.keys()
    for key, hits in candidates.items():
        weight, x, y = (np.array(v) for v in zip(*hits, strict=True))
        c = found[key]
        assert c["windows"] == len(hits)
        assert c["weight"] == pytest.approx(float(weight.mean()), rel=1e-6)
        assert c["input"] == pytest.approx(float(x.mean()), rel=1e-5)
        assert c["output"] == pytest.approx(float(y.mean()), rel=1e-5)
        assert c["contribution"] == pytest.approx(float((weight * x).mean()), rel=1e-5)


@pytest.mark.parametrize("model_type", ["llama", "opt", "gpt_neox"])
def test_planted_super_weight_is_found_with_the_numbers_of_plain_hooks(tmp_path, planted, corpus_jsonl, model_type):
    model_dir = planted(model_type)
    bos = FAMILY_CONFIGS[model_type][1]
    _, results = run_validate(tmp_path, *tiny_run_args(model_dir, corpus_jsonl, SEQ, N, 2))
    baseline = results["variants"]["baseline"]
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows, candidates = _expected(model, _windows(model_dir, corpus_jsonl, bos))
    _assert_entry(baseline, rows, candidates)
    # the planted weight is found, with its value, at BOS (position 0) with BOS, else at "."
    sw = [c for c in baseline["super_weights"] if (c["layer"], c["row"], c["col"]) == (PLANT_LAYER, ROW, COL)]
    assert len(sw) == 1
    assert sw[0]["weight"] == WEIGHT
    assert sw[0]["share"] == pytest.approx(1.0, abs=0.05)  # that one weight writes the output
    if bos:
        assert baseline["super_weights"] == sw  # the only candidate
        assert (sw[0]["position"], sw[0]["token"], sw[0]["windows"]) == (0, "<|endoftext|>", N)
    else:
        assert sw[0]["token"] == "."
    assert baseline["mlp_down"][PLANT_LAYER]["output"]["channel"] == ROW


def test_toy_super_weight_is_block_2_neuron_0_to_dim_17(tmp_path):
    truth = ToyConfig()
    run_dir, results = run_validate(tmp_path, *toy_run_args(n=4, batch_size=2))
    baseline = results["variants"]["baseline"]
    (sw,) = baseline["super_weights"]
    weight = build_toy_model().transformer.h[truth.massive_layer].mlp.c_proj.weight  # Conv1D: (in, out)
    assert (sw["layer"], sw["row"], sw["col"]) == (truth.massive_layer, truth.massive_dim, 0)
    assert sw["weight"] == float(weight[0, truth.massive_dim])
    assert (sw["position"], sw["windows"], sw["fraction"]) == (0, 4, 1.0)
    assert sw["output"] == pytest.approx(truth.massive_value, rel=0.2)
    row = baseline["mlp_down"][truth.massive_layer]
    assert (row["input"]["channel"], row["input"]["position"]) == (0, 0)
    assert (row["output"]["channel"], row["output"]["position"], row["output"]["massive_windows"]) == (17, 0, 4)
    assert results["model"]["super_weights"] is True  # on by default
    assert (run_dir / "figures" / "baseline_mlp_down.png").stat().st_size > 0


@pytest.mark.parametrize("model_type", [f for f in FAMILIES if f not in ("mixtral", "gpt_oss")])  # fused experts
def test_probe_records_equal_plain_hooks_in_every_family(family_dir, model_type):
    """The probe's per-window record, block by block, against plain hooks on the projection
    each family names (random weights: no super weight, the record is defined all the same)."""
    model = AutoModelForCausalLM.from_pretrained(family_dir(model_type)).eval()
    windows = torch.randint(2, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    _, ins, outs = _hand(model, windows)
    layout = decoder_layout(model)
    with torch.no_grad(), probes(layout, Needs(mlp_down=True)) as probed:
        layout.backbone(input_ids=windows, use_cache=False)
    for layer, (x, y, record) in enumerate(zip(ins, outs, probed.mlp_down, strict=True)):
        for got, want in zip(
            (record.in_value, record.in_channel, record.in_position, record.out_value, record.out_channel,
             record.out_position), (*_top1(x), *_top1(y)), strict=True
        ):  # fmt: skip
            np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-6, err_msg=f"layer {layer}")
        p = record.out_position.numpy()
        cols = np.abs(x[np.arange(2), p]).argmax(axis=1)
        np.testing.assert_array_equal(record.col.numpy(), cols)
        np.testing.assert_allclose(record.col_value.double().numpy(), x[np.arange(2), p, cols], rtol=1e-6)
        w = _down(model, layer).weight.detach()
        j = record.out_channel
        want_w = w[j, cols] if isinstance(_down(model, layer), torch.nn.Linear) else w[cols, j]
        assert torch.equal(record.weight, want_w.float())


def test_mixtral_is_skipped_in_one_line(family_dir):
    with pytest.warns(UserWarning, match=r"^super_weights: skipped .*fused parameter") as caught:
        module = MassiveActivations(str(family_dir("mixtral")))
    (message,) = [str(w.message) for w in caught if str(w.message).startswith("super_weights")]
    assert "\n" not in message and "mlp_down and super_weights are null" in message
    assert not module.analyses.needs.mlp_down  # no probe: nothing is measured, its keys are null


def test_off_leaves_null_keys_and_no_probe(tmp_path):
    _, results = run_validate(
        tmp_path, *toy_run_args("--model.analyses.super_weights.enabled", "false", n=2, batch_size=2)
    )
    baseline = results["variants"]["baseline"]
    assert baseline["mlp_down"] is None and baseline["super_weights"] is None
    assert results["model"]["super_weights"] is False


def test_step_with_super_weights_reads_nothing_back(tmp_path):
    recorded = []
    step = MassiveActivations.validation_step

    def recorded_step(self, batch, batch_idx):
        with HostReads() as mode:
            step(self, batch, batch_idx)
        recorded.append(mode)

    variants = {"zero": {"set_massive": {"layer": 2, "to": "zero"}}}
    with mock.patch.object(MassiveActivations, "validation_step", recorded_step):
        _, results = run_validate(
            tmp_path,
            *toy_run_args(
                "--model.analyses.super_weights.enabled",
                "true",
                "--model.variants",
                json.dumps(variants),
                n=2,
                batch_size=2,
            ),
        )
    (mode,) = recorded
    assert {"argmax", "gather", "index"} <= set(mode.ops)  # the probe ran in the step
    assert mode.found == []
    # an edit of block 2's output comes after its MLP: the super weight is found in both variants
    for name in ("baseline", "zero"):
        assert [(c["layer"], c["row"], c["col"]) for c in results["variants"][name]["super_weights"]] == [(2, 17, 0)]


def _candidate(layer, row, col, windows):
    return {"layer": layer, "row": row, "col": col, "weight": 35.1, "input": 51.0, "output": 1792.0, "share": None,
            "position": 0, "token": "x", "windows": windows, "fraction": windows / 40}  # fmt: skip


def test_candidates_table_most_frequent_first_and_cut_with_a_note():
    candidates = [_candidate(layer, 17, layer, windows) for layer, windows in enumerate(range(1, TABLE_ROWS + 3))]
    rows = candidates_table(candidates).split("\n\n")[0].splitlines()[2:]
    assert len(rows) == TABLE_ROWS
    assert [r.split("|")[1].strip() for r in rows[:2]] == [str(TABLE_ROWS + 1), str(TABLE_ROWS)]  # most windows first
    assert candidates_table(candidates).endswith("2 more in results.json")
    assert "None" not in candidates_table(candidates) and "n/a" in rows[0]


def test_mlp_down_figure_log_depth_profile_marks_the_candidate():
    rows = [{"layer": i, "input": {"value": v}, "output": {"value": 10 * v}} for i, v in enumerate([0.5, 50.0, 0.4])]
    fig, ax = weight_figures.mlp_down_figure(rows, [_candidate(1, 17, 0, 3), _candidate(1, 5, 2, 1)], "t")
    assert ax.get_yscale() == "log"
    assert [list(line.get_ydata()) for line in ax.get_lines()] == [[0.5, 50.0, 0.4], [5.0, 500.0, 4.0]]
    assert [t.get_text() for t in ax.texts] == ["W[17, 0]"]  # the block's most frequent candidate
    _, ax = weight_figures.mlp_down_figure(rows, [], "t")
    assert "no super-weight candidate" in ax.get_title()
