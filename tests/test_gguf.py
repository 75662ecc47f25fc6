"""GGUF files: a tiny planted Llama written by the `gguf` package at F32 and Q8_0 (gguf_files.py)
runs from the CLI and `measure()`, as a `.gguf` path or as a folder + `model.gguf_file`; the
numbers equal plain hooks on the same weights as a transformers checkpoint; results.json
records the file; every bad input is one line before a run directory exists."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import lit_massive
from gguf_files import DIM, PLANTED, PLANTED_TOKENS, write_tiny_gguf
from helpers import read_texts, run_validate
from lit_massive.cli import cli_main
from lit_massive.models import gguf as gguf_module
from lit_massive.models.loading import load_causal_lm, model_source
from lit_massive.models.sharding import check_shardable

SEQ_LEN, N = 128, 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """qtype -> TinyGGUF, written once."""
    return {q: write_tiny_gguf(tmp_path_factory.mktemp(f"gguf_{q}"), q) for q in ("F32", "Q8_0")}


def _args(model: str, jsonl: Path, *extra: str) -> list[str]:
    return ["--model.model_name_or_path", model, "--data.data_files", str(jsonl), "--data.seq_len", str(SEQ_LEN),
            "--data.num_sequences", str(N), "--data.batch_size", "2", *extra]  # fmt: skip


def _reference(reference: Path, jsonl: Path) -> tuple[list[np.ndarray], torch.Tensor, torch.Tensor]:
    """Block outputs of the transformers twin with plain forward hooks, no project code, its
    windows, and where they hold a planted token."""
    tok = AutoTokenizer.from_pretrained(reference)
    ids = tok("\n\n".join(read_texts(jsonl)), add_special_tokens=False)["input_ids"]
    windows = torch.tensor([ids[s * SEQ_LEN : (s + 1) * SEQ_LEN] for s in range(N)])
    model = AutoModelForCausalLM.from_pretrained(reference).eval()
    outs = []
    hooks = [b.register_forward_hook(lambda m, a, o: outs.append(o[0] if isinstance(o, tuple) else o))
             for b in model.model.layers]  # fmt: skip
    with torch.no_grad():
        model(windows)
    for h in hooks:
        h.remove()
    planted = torch.isin(windows, torch.tensor(tok.convert_tokens_to_ids(list(PLANTED_TOKENS))))
    return [np.abs(o.double().numpy()).reshape(N, -1) for o in outs], windows, planted


def test_a_gguf_file_runs_and_equals_plain_hooks_on_its_weights(tiny, tmp_path, corpus_jsonl):
    f32 = tiny["F32"]
    run_dir, results = run_validate(tmp_path, *_args(str(f32.path), corpus_jsonl))
    assert run_dir.parent.name == "tiny-F32"  # the run is named after the file
    model = results["model"]
    assert model["gguf_file"] == "tiny-F32.gguf" and model["gguf_architecture"] == "llama"
    assert model["gguf_file_type"] == "F32"
    assert model["gguf_tensor_types"] == f32.tensor_types == {"F32": 29}  # 3 x 9 + embedding + final norm
    assert model["revision"] is None and model["n_layer"] == 3 and model["n_kv_head"] == 2
    provenance = results["provenance"]["model"]
    assert provenance["weights_sha256"] == hashlib.sha256(f32.path.read_bytes()).hexdigest()
    assert provenance["weights_files"] == ["tiny-F32.gguf"]
    blocks, windows, planted = _reference(f32.reference, corpus_jsonl)
    assert planted.any(dim=1).all()  # every window holds a full stop: its top-1 is the planted entry
    for row, a in zip(results["variants"]["baseline"]["layers"], blocks, strict=True):
        desc = -np.sort(-a, axis=1)
        assert row["top"] == pytest.approx(desc[:, :3].mean(0).tolist(), rel=1e-5)
        assert row["median"] == pytest.approx(np.sort(a, axis=1)[:, (a.shape[1] - 1) // 2].mean(), rel=1e-5)
        assert row["top1_dim"] == DIM and row["top1_dim_fraction"] == 1.0  # the planted entry
        assert row["top1_token"] in (".", " .") and row["massive_fraction"] == 1.0
    located = results["variants"]["baseline"]["massive"]
    assert located and all(e["dim"] == DIM and e["token"] in (".", " .") for e in located)
    positions = {e["position"] for e in located}
    assert positions <= set(torch.nonzero(planted)[:, 1].tolist())
    assert results["variants"]["baseline"]["first_massive_layer"] == 0


def test_a_folder_with_gguf_file_equals_the_path_form(tiny, tmp_path, corpus_jsonl):
    f32 = tiny["F32"]
    _, by_path = run_validate(tmp_path / "a", *_args(str(f32.path), corpus_jsonl))
    _, by_folder = run_validate(
        tmp_path / "b", *_args(str(f32.path.parent), corpus_jsonl, "--model.gguf_file", f32.path.name)
    )
    assert by_folder["model"]["gguf_file"] == by_path["model"]["gguf_file"]
    assert by_folder["variants"]["baseline"]["layers"] == by_path["variants"]["baseline"]["layers"]
    assert by_folder["variants"]["baseline"]["perplexity"] == by_path["variants"]["baseline"]["perplexity"]


def test_q8_0_keeps_the_planted_activation_and_records_its_types(tiny, tmp_path, corpus_jsonl):
    q8, f32 = tiny["Q8_0"], tiny["F32"]
    results = lit_massive.measure(str(q8.path), {"data_files": str(corpus_jsonl), "seq_len": SEQ_LEN,
                                                 "num_sequences": N})  # fmt: skip
    model = results.model
    assert model["gguf_file_type"] == "Q8_0"
    assert model["gguf_tensor_types"] == q8.tensor_types == {"Q8_0": 22, "F32": 7}  # 2-D weights quantized
    exact = lit_massive.measure(str(f32.path), {"data_files": str(corpus_jsonl), "seq_len": SEQ_LEN,
                                                "num_sequences": N})  # fmt: skip
    for q, e in zip(results.variants["baseline"]["layers"], exact.variants["baseline"]["layers"], strict=True):
        assert q["top1_dim"] == e["top1_dim"] == DIM
        # Q8_0 keeps a block's largest entry to its float16 scale: the planted 400 within 0.1%
        assert q["top"][0] == pytest.approx(e["top"][0], rel=1e-3)
        assert q["median"] != e["median"]  # the rest did change: the weights really are the rounded ones
    assert exact.variants["baseline"]["layers"][0]["top"][0] > PLANTED * 0.9


def test_the_dtype_option_sets_the_dequantized_weights_dtype(tiny, corpus_jsonl):
    results = lit_massive.measure(str(tiny["F32"].path), {"data_files": str(corpus_jsonl), "seq_len": SEQ_LEN,
                                                          "num_sequences": 2}, dtype="bfloat16")  # fmt: skip
    assert results.model["parameter_dtype"] == "bfloat16"


def _refused(capsys, tmp_path, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["validate", *argv, "--trainer.default_root_dir", str(tmp_path)])
    message = str(exit_info.value.code)
    assert message.startswith("lit_massive: error: ") and "\n" not in message, message
    assert not (tmp_path / "lightning_logs").exists()  # before any run directory
    return message


def _write_header_only(path: Path, architecture: str) -> None:
    import gguf

    writer = gguf.GGUFWriter(path, architecture)
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_bad_gguf_input_is_one_line_before_any_work(tiny, tmp_path, corpus_jsonl, capsys):
    f32 = tiny["F32"]
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(f32.path.read_bytes()[: f32.path.stat().st_size // 2])
    assert "not a readable GGUF file" in _refused(capsys, tmp_path, *_args(str(truncated), corpus_jsonl))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    assert "not a readable GGUF file" in _refused(capsys, tmp_path, *_args(str(junk), corpus_jsonl))
    neox = tmp_path / "neox.gguf"
    _write_header_only(neox, "gptneox")
    message = _refused(capsys, tmp_path, *_args(str(neox), corpus_jsonl))
    assert "GGUF architecture 'gptneox' cannot be read by transformers" in message and "llama" in message
    missing = _refused(capsys, tmp_path, *_args(str(tmp_path / "nope.gguf"), corpus_jsonl))
    assert "nope.gguf" in missing and "does not exist" in missing
    other = _refused(capsys, tmp_path, *_args(str(f32.path.parent), corpus_jsonl, "--model.gguf_file", "x.gguf"))
    assert "gguf_file='x.gguf' is not in" in other and "tiny-F32.gguf" in other
    both = _refused(capsys, tmp_path, *_args(str(f32.path), corpus_jsonl, "--model.gguf_file", "x.gguf"))
    assert "names another" in both
    local_revision = _refused(capsys, tmp_path, *_args(str(f32.path), corpus_jsonl, "--model.revision", "step1"))
    assert "revision='step1'" in local_revision and "local" in local_revision


def test_missing_packages_are_named_with_the_extra(tiny, tmp_path, corpus_jsonl, capsys, monkeypatch):
    real = gguf_module.importlib.util.find_spec
    monkeypatch.setattr(
        gguf_module.importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a)
    )
    message = _refused(capsys, tmp_path, *_args(str(tiny["F32"].path), corpus_jsonl))
    assert "needs the accelerate package" in message and 'pip install "lit_massive[gguf]"' in message


def test_a_sharded_run_of_a_gguf_model_is_refused(tiny):
    with pytest.raises(lit_massive.InputError, match="GGUF model 'tiny-F32.gguf'.*ddp"):
        check_shardable(model_source(str(tiny["F32"].path)))


def test_a_hub_revision_that_is_not_cached_offline_names_the_revision(tmp_path, corpus_jsonl, capsys):
    message = _refused(capsys, tmp_path, *_args("EleutherAI/pythia-160m", corpus_jsonl, "--model.revision", "step1000"))
    assert "'EleutherAI/pythia-160m' at revision 'step1000' could not be loaded" in message


def test_a_revision_loads_that_snapshot_of_the_hub_cache(tmp_path, corpus_jsonl, monkeypatch):
    """A hub cache holding two revisions of one repository (as `from_pretrained` leaves it):
    `model.revision` picks the model and tokenizer of that revision, the run is named after it."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "models--team--tiny"
    for ref, seed in (("step0", 1), ("step100", 2)):
        commit = hashlib.sha1(ref.encode()).hexdigest()
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
        (tmp_path / ref).mkdir()
        written = write_tiny_gguf(tmp_path / ref, "F32", seed=seed)
        shutil.copytree(written.reference, repo / "snapshots" / commit)
        shutil.copy(written.path, repo / "snapshots" / commit)  # the same weights as a GGUF file beside them
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    import transformers.utils.hub as hub

    monkeypatch.setattr(hub, "TRANSFORMERS_CACHE", str(cache), raising=False)
    runs = {}
    for ref in ("step0", "step100"):
        runs[ref] = run_validate(tmp_path / f"run_{ref}", *_args("team/tiny", corpus_jsonl, "--model.revision", ref))
    for ref, (run_dir, results) in runs.items():
        assert run_dir.parent.name == f"tiny@{ref}"
        assert results["model"]["revision"] == ref
        assert results["provenance"]["model"]["requested_revision"] == ref
        assert results["provenance"]["model"]["revision"] == hashlib.sha1(ref.encode()).hexdigest()
        assert f"revision: {ref}\n" in (run_dir / "config.yaml").read_text()  # a rerun of it reads the same
    first, second = (runs[r][1]["variants"]["baseline"]["layers"] for r in ("step0", "step100"))
    assert [r["median"] for r in first] != [r["median"] for r in second]  # different weights were read
    data = {"data_files": str(corpus_jsonl), "seq_len": SEQ_LEN, "num_sequences": N}
    from_python = lit_massive.measure("team/tiny", data, revision="step100", batch_size=2)
    assert from_python.model["revision"] == "step100"
    assert [r["median"] for r in from_python.variants["baseline"]["layers"]] == [r["median"] for r in second]
    # a GGUF file in a hub repository, at a revision: the same weights, read from the file
    _, gguf_run = run_validate(
        tmp_path / "run_gguf", *_args("team/tiny", corpus_jsonl, "--model.revision", "step100",
                                      "--model.gguf_file", "tiny-F32.gguf"),
    )  # fmt: skip
    assert gguf_run["model"]["gguf_file"] == "tiny-F32.gguf" and gguf_run["model"]["gguf_file_type"] == "F32"
    assert gguf_run["provenance"]["model"]["revision"] == hashlib.sha1(b"step100").hexdigest()
    np.testing.assert_allclose([r["median"] for r in gguf_run["variants"]["baseline"]["layers"]],
                               [r["median"] for r in second], rtol=1e-6)  # fmt: skip


def test_short_names_take_no_file_or_revision_and_say_how_to_fetch(tmp_path, corpus_jsonl, capsys, monkeypatch):
    assert "takes no revision='x'" in _refused(capsys, tmp_path, *_args("toy", corpus_jsonl, "--model.revision", "x"))
    monkeypatch.setenv("LIT_MASSIVE_CACHE", str(tmp_path / "empty_cache"))
    message = _refused(capsys, tmp_path, *_args("smollm2", corpus_jsonl))
    assert "not fetched yet" in message and "lit-massive fetch smollm2" in message


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_every_written_type_loads_as_the_gguf_package_dequantizes_it(qtype, tmp_path):
    """The weights the tool runs on are exactly the `gguf` package's own dequantization of the
    stored blocks (an MLP output projection: llama.cpp stores it unpermuted)."""
    import gguf

    written = write_tiny_gguf(tmp_path, qtype)
    model = load_causal_lm(str(written.path))
    tensor = next(t for t in gguf.GGUFReader(written.path).tensors if t.name == "blk.1.ffn_down.weight")
    expected = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(model.config.hidden_size, -1)
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight, torch.from_numpy(expected.astype(np.float32)))
    record = gguf_module.describe(written.path)
    assert record["gguf_file_type"] == qtype and record["gguf_tensor_types"] == {qtype: 22, "F32": 7}
