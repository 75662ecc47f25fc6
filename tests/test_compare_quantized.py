"""`compare` of one tiny planted Llama written to GGUF at F32, Q8_0 and Q4_0 (gguf_files.py):
the section against the reference (the F32 file, given first) holds, block by block and
massive entry by massive entry, what a plain transformers forward gives on the `gguf`
package's own dequantization of each file (no project code); a run of another architecture
is left out with its reason, and runs of different models get no section."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gguf_files import DIM, dequantized_state_dict, write_tiny_gguf
from helpers import read_texts, run_validate
from lit_massive.cli import cli_main
from lit_massive.report.comparison import load_runs
from lit_massive.report.weights_comparison import KEY, against_reference, reference_lines

QTYPES = ("F32", "Q8_0", "Q4_0")
SEQ_LEN, N = 128, 4
# the full stops' value in dim DIM: not a multiple of Q8_0's or Q4_0's float16 scale (400 is
# Q4_0-exact, 400 / 8 = 50), so the quantized embeddings move it, as real weights move
PLANTED_HERE = 397.3
THRESHOLD, RATIO = 100.0, 1000.0  # the runs' massive criterion (the defaults)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, corpus_jsonl) -> dict[str, tuple[Path, Path]]:
    """qtype -> (GGUF file, run directory): one model (one seed) at each type, its 2-D weights
    (token embedding and output matrix included) at that type, norms at F32; untied, so the
    perplexity is that of a random model (near the vocabulary's size), not ~1e64."""
    root = tmp_path_factory.mktemp("quantized")
    made = {}
    for qtype in QTYPES:
        (root / qtype).mkdir()
        written = write_tiny_gguf(root / qtype, qtype, planted=PLANTED_HERE, tied=False)
        assert written.tensor_types == ({"F32": 30} if qtype == "F32" else {qtype: 23, "F32": 7})
        args = ["--model.model_name_or_path", str(written.path), "--data.data_files", str(corpus_jsonl),
                "--data.seq_len", str(SEQ_LEN), "--data.num_sequences", str(N), "--data.batch_size", "2"]  # fmt: skip
        made[qtype] = (written.path, run_validate(root / "runs", *args)[0])
    return made


@pytest.fixture(scope="module")
def compared(quantized, tmp_path_factory) -> tuple[dict, str, str]:
    """compare F32 Q8_0 Q4_0: (comparison.json, comparison.md, what it printed)."""
    out = tmp_path_factory.mktemp("cmp") / "out"
    printed = _compare(*(quantized[q][1] for q in QTYPES), "--out", out)
    return json.loads((out / "comparison.json").read_text()), (out / "comparison.md").read_text(), printed


def _compare(*args) -> str:
    """What `compare` prints, run in-process."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        cli_main(["compare", *map(str, args)])
    return buffer.getvalue()


@pytest.fixture(scope="module")
def plain(quantized, corpus_jsonl) -> dict[str, dict]:
    """qtype -> the block outputs (N, T, D) and the perplexity of a plain forward of the
    transformers twin with every weight replaced by the `gguf` package's dequantization of
    that file, on the runs' windows (the corpus joined, tokenised, cut in N x SEQ_LEN)."""
    reference = quantized["F32"][0].parent / "reference"
    tok = AutoTokenizer.from_pretrained(reference)
    ids = tok("\n\n".join(read_texts(corpus_jsonl)), add_special_tokens=False)["input_ids"]
    windows = torch.tensor([ids[s * SEQ_LEN : (s + 1) * SEQ_LEN] for s in range(N)])
    out = {}
    for qtype, (path, _) in quantized.items():
        model = AutoModelForCausalLM.from_pretrained(reference).eval()
        model.load_state_dict(dequantized_state_dict(path), strict=True)
        blocks: list[torch.Tensor] = []

        def keep(module, args, output, blocks=blocks) -> None:
            blocks.append(output[0] if isinstance(output, tuple) else output)

        hooks = [b.register_forward_hook(keep) for b in model.model.layers]
        with torch.no_grad():
            logits = model(windows).logits.double()
        for h in hooks:
            h.remove()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), windows[:, 1:].flatten(), reduction="sum")
        out[qtype] = {"blocks": [b.double() for b in blocks], "ppl": float(torch.exp(nll / (N * (SEQ_LEN - 1))))}
    return out


def _massive_mean(x: torch.Tensor, position: int, dim: int) -> float:
    """The mean of x[:, position, dim] over the windows where that entry is massive (above
    THRESHOLD and RATIO x the window's lower median |x|), as the locator reports it."""
    a = x.abs().flatten(1)
    median = a.sort(dim=1).values[:, (a.shape[1] - 1) // 2]
    value = x[:, position, dim]
    hit = (value.abs() > THRESHOLD) & (value.abs() > RATIO * median)
    assert hit.any()
    return float(value[hit].mean())


def test_the_planted_shift_is_what_the_dequantized_weights_give(quantized, compared, plain):
    content, markdown, printed = compared
    section = content[KEY]
    labels = [r["label"] for r in content["runs"]]
    assert section["reference"] == labels[0] and section["left_out"] == []
    assert section["reference_weights"] == "GGUF F32: 30 F32 tensors"
    assert [(p["run"], p["variant"]) for p in section["pairs"]] == [(labels[1], "baseline"), (labels[2], "baseline")]
    ref_results = json.loads((quantized["F32"][1] / "results.json").read_text())
    ref_massive = ref_results["variants"]["baseline"]["massive"]
    assert ref_massive and {e["dim"] for e in ref_massive} == {DIM}  # the planted dim, at each full stop
    f32 = plain["F32"]
    for pair, qtype in zip(section["pairs"], QTYPES[1:], strict=True):
        results = json.loads((quantized[qtype][1] / "results.json").read_text())
        assert pair["weights"]["other"] == f"GGUF {qtype}: 23 {qtype}, 7 F32 tensors"
        # the massive dims and positions survive quantization: the same entries, none gone or new
        assert pair["massive_same"] is True and pair["massive_gone"] == pair["massive_new"] == 0
        assert pair["massive_kept"] == len(ref_massive) == len(results["variants"]["baseline"]["massive"])
        assert pair["massive_dims"] == {"reference": [DIM], "other": [DIM], "same": True}
        positions = sorted({e["position"] for e in ref_massive})
        assert pair["massive_positions"] == {"reference": positions, "other": positions, "same": True}
        mine = plain[qtype]
        shifts = []
        for e in pair["massive"]:
            layer, position = e["layer"], e["position"]
            expected_ref = _massive_mean(f32["blocks"][layer], position, e["dim"])
            expected = _massive_mean(mine["blocks"][layer], position, e["dim"])
            # each value as the plain forward gives it (float32 sums in another order: ~1e-7 relative)
            assert e["value_reference"] == pytest.approx(expected_ref, rel=1e-6)
            assert e["value_other"] == pytest.approx(expected, rel=1e-6)
            # the shift, to the float32 rounding of two values near 400 (a few 1e-5; here equal)
            assert e["value_change"] == pytest.approx(expected - expected_ref, abs=1e-4)
            assert e["value_change_pct"] == pytest.approx(100 * (e["value_other"] / e["value_reference"] - 1))
            shifts.append(expected - expected_ref)
        # the shift is real: far above the float32 noise the comparison above allows
        assert min(abs(s) for s in shifts) > 0.01, shifts
        # per block: the top-1 (the planted entry) and the median as the plain forward gives them
        for row, ref_x, x in zip(pair["layers"], f32["blocks"], mine["blocks"], strict=True):
            top, ref_top = (t.abs().flatten(1).max(dim=1).values.mean().item() for t in (x, ref_x))
            assert row["top1_reference"] == pytest.approx(ref_top, rel=1e-6)
            assert row["top1_other"] == pytest.approx(top, rel=1e-6)
            assert row["top1_change"] == pytest.approx(top - ref_top, abs=1e-4)
            median = x.abs().flatten(1).sort(dim=1).values[:, (x[0].numel() - 1) // 2].mean().item()
            assert row["median_other"] == pytest.approx(median, rel=1e-5)
            assert row["top1_dim_reference"] == row["top1_dim_other"] == DIM
            assert row["massive_gone"] == row["massive_new"] == 0
        # perplexity: the two runs' difference, each as the plain forward's
        ppl = pair["perplexity"]
        assert ppl["reference"] == ref_results["variants"]["baseline"]["perplexity"]
        assert ppl["other"] == results["variants"]["baseline"]["perplexity"]
        assert ppl["change"] == ppl["other"] - ppl["reference"]
        assert ppl["reference"] == pytest.approx(f32["ppl"], rel=1e-7)
        assert ppl["other"] == pytest.approx(mine["ppl"], rel=1e-7)
        # float32 logits: each perplexity to ~1e-8 relative (~5e-6 here), a change of a few 1e-2 to 1e-1
        assert ppl["change"] == pytest.approx(mine["ppl"] - f32["ppl"], abs=5e-5)
        assert abs(ppl["change"]) > 0.01
        assert 100 < ppl["reference"] < 1000  # a random model over a few hundred tokens
        # the terminal and comparison.md say it
        line = next(text for text in printed.splitlines() if text.startswith(f"  {pair['run']} (GGUF {qtype}:"))
        assert f"{pair['massive_kept']} kept, 0 gone, 0 new (dims and positions the same)" in line
        assert f"({ppl['change']:+.4g}," in line
        assert f"### {pair['run']} (GGUF {qtype}: 23 {qtype}, 7 F32 tensors)" in markdown


def test_the_planted_shift_follows_the_embedding_scale(compared):
    """The planted entry is its embedding block's largest: its stored value is the scale's
    float16 rounding, times 127 (Q8_0) or -8 (Q4_0); the blocks' updates add little to it, so
    the block-0 shift is that rounding to within the attention/MLP part (a few 1e-3)."""
    scales = {"Q8_0": 127 * float(np.float16(PLANTED_HERE / 127)), "Q4_0": -8 * float(np.float16(PLANTED_HERE / -8))}
    section = compared[0][KEY]
    for pair, qtype in zip(section["pairs"], QTYPES[1:], strict=True):
        first = [e["value_change"] for e in pair["massive"] if e["layer"] == 0]
        assert np.mean(first) == pytest.approx(scales[qtype] - PLANTED_HERE, abs=5e-3)


def test_another_architecture_is_left_out_with_its_reason(quantized, family_dir, corpus_jsonl, tmp_path):
    """A GPT-NeoX run beside the F32 and Q8_0 files: compared no further, its reason said; with
    the GPT-NeoX run first (the reference), no section, one line why."""
    neox, _ = run_validate(tmp_path / "runs", "--model.model_name_or_path", str(family_dir("gpt_neox")),
                           "--data.data_files", str(corpus_jsonl), "--data.seq_len", "32",
                           "--data.num_sequences", "2")  # fmt: skip
    printed = _compare(quantized["F32"][1], neox, quantized["Q8_0"][1], "--out", tmp_path / "a")
    section = json.loads((tmp_path / "a" / "comparison.json").read_text())[KEY]
    assert [p["run"].split("/")[0] for p in section["pairs"]] == ["tiny-Q8_0"]
    (left,) = section["left_out"]
    assert left["reason"].startswith("architecture differs (gpt_neox, ")
    assert "vs the reference's llama, 3 layers x 64)" in left["reason"]
    assert f"  not compared: {left['run']}: {left['reason']}" in printed.splitlines()
    printed = _compare(neox, quantized["F32"][1], "--out", tmp_path / "b")
    section = json.loads((tmp_path / "b" / "comparison.json").read_text())[KEY]
    assert section["pairs"] == [] and len(section["left_out"]) == 1
    (line,) = [text for text in printed.splitlines() if "against the reference" in text]
    assert line.startswith("no comparison against the reference ") and "architecture differs" in line
    assert "### " not in (tmp_path / "b" / "comparison.md").read_text()  # no pair section


def test_other_windows_are_left_out(quantized, corpus_jsonl, tmp_path):
    """The same file on shorter windows: its positions are other tokens, so no entry compares."""
    path = quantized["F32"][0]
    short, _ = run_validate(tmp_path / "runs", "--model.model_name_or_path", str(path), "--data.data_files",
                            str(corpus_jsonl), "--data.seq_len", "64", "--data.num_sequences", str(N))  # fmt: skip
    printed = _compare(quantized["F32"][1], short, "--out", tmp_path / "out")
    section = json.loads((tmp_path / "out" / "comparison.json").read_text())[KEY]
    assert section["pairs"] == []
    assert section["left_out"][0]["reason"] == "windows differ (seq_len 64 vs 128)"
    assert "no comparison against the reference" in printed and "windows differ (seq_len 64 vs 128)" in printed


def test_gone_and_new_entries_and_their_dims_and_positions(quantized, tmp_path):
    """The Q8_0 run's results.json with one massive entry taken out and one put in at another
    dim and position: the pair says which, and that dims and positions differ."""
    ref_dir, q8_dir = quantized["F32"][1], quantized["Q8_0"][1]
    results = json.loads((q8_dir / "results.json").read_text())
    entries = results["variants"]["baseline"]["massive"]
    gone = entries.pop(0)
    new = {**entries[0], "layer": 2, "dim": DIM + 1, "position": 3, "token": "x", "value": -150.0, "fraction": 0.5}
    entries.append(new)
    edited = tmp_path / "lightning_logs" / "tiny-Q8_0" / "version_9"
    edited.mkdir(parents=True)
    (edited / "results.json").write_text(json.dumps(results))
    section = against_reference(load_runs([str(ref_dir), str(edited)]))
    (pair,) = section["pairs"]
    by_status = {s: [(e["layer"], e["dim"], e["position"]) for e in pair["massive"] if e["status"] == s]
                 for s in ("kept", "gone", "new")}  # fmt: skip
    assert by_status["gone"] == [(gone["layer"], gone["dim"], gone["position"])]
    assert by_status["new"] == [(2, DIM + 1, 3)]
    assert len(by_status["kept"]) == len(entries) - 1
    assert (pair["massive_kept"], pair["massive_gone"], pair["massive_new"]) == (len(entries) - 1, 1, 1)
    assert pair["massive_same"] is False
    assert pair["massive_dims"] == {"reference": [DIM], "other": [DIM, DIM + 1], "same": False}
    ref_massive = json.loads((ref_dir / "results.json").read_text())["variants"]["baseline"]["massive"]
    assert pair["massive_positions"]["reference"] == sorted({e["position"] for e in ref_massive})
    assert pair["massive_positions"]["other"] == sorted({e["position"] for e in entries})
    came = next(e for e in pair["massive"] if e["status"] == "new")
    assert came["value_reference"] is None and came["value_other"] == -150.0 and came["value_change"] is None
    went = next(e for e in pair["massive"] if e["status"] == "gone")
    at = {(e["layer"], e["dim"], e["position"]): e["value"] for e in ref_massive}
    assert went["value_reference"] == at[(gone["layer"], gone["dim"], gone["position"])]
    assert went["value_other"] is None and went["value_change"] is None
    rows = {row["layer"]: row for row in pair["layers"]}
    assert rows[gone["layer"]]["massive_gone"] == 1 and rows[2]["massive_new"] == 1
    line = reference_lines(section)[1]
    assert f"{len(entries) - 1} kept, 1 gone, 1 new (dims and positions differ)" in line
