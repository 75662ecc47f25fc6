"""The Python API: `measure` runs the same pass as `validate` and returns its RunResults."""

import re
from pathlib import Path

import pandas as pd
import pytest

import lit_massive
from helpers import assert_same_numbers, run_validate
from lit_massive.data import WindowsDataModule
from lit_massive.models.toy import ToyConfig, build_toy_model, build_toy_tokenizer, corpus_path
from lit_massive.report.schema import read_results

TOY_DATA = {"dataset": "toy", "seq_len": 64, "num_sequences": 4, "batch_size": 2}
VARIANTS = {"cut": [[5, 1], [8, 3]]}


@pytest.fixture(scope="module")
def measured():
    return lit_massive.measure("toy", TOY_DATA, analyses=["head_scores", "perplexity"], variants=VARIANTS)


def test_measure_equals_the_cli(tmp_path, measured):
    _, cli = run_validate(
        tmp_path,
        "--model.model_name_or_path", "toy", "--data.dataset", "toy", "--data.seq_len", "64",
        "--data.num_sequences", "4", "--data.batch_size", "2", "--model.head_scores", "true",
        "--model.head_internals", "false", "--model.super_weights", "false",
        "--model.variants", '{"cut": [[5, 1], [8, 3]]}',
    )  # fmt: skip
    assert_same_numbers(measured.to_json()["variants"], cli["variants"])
    # sink_rate comes with head_scores (one option); the internals were not named
    assert measured.analyses == ["layer_profile", "head_scores", "sink_rate", "perplexity", "locator"]


def test_a_loaded_model_and_given_windows_equal_the_named_model(measured):
    data = WindowsDataModule(**TOY_DATA, model_name_or_path="toy")
    data.setup()
    got = lit_massive.measure(
        build_toy_model(), windows=data.windows, tokenizer=build_toy_tokenizer(), batch_size=2,
        analyses=["head_scores", "perplexity"], variants=VARIANTS,
    )  # fmt: skip
    text_keys = ("bits_per_byte", "byte_perplexity", "word_perplexity", "scored_bytes", "scored_words")
    for name, entry in got.variants.items():
        assert all(entry.pop(key) is None for key in text_keys)  # token ids alone: no text to count
        assert_same_numbers(entry, {k: v for k, v in measured.variants[name].items() if k not in text_keys})


def test_text_is_cut_into_windows_as_the_corpus_is(measured):
    rows = corpus_path().read_text(encoding="utf-8").splitlines()  # as the text builder reads them
    got = lit_massive.measure(
        "toy", text=rows, tokenizer=build_toy_tokenizer(), seq_len=64, num_sequences=4, batch_size=2,
        analyses=["head_scores", "perplexity"], variants=VARIANTS,
    )  # fmt: skip
    assert_same_numbers(got.variants, measured.variants)


def test_frames_hold_the_entries(measured):
    layers = measured.layer_frame()
    assert isinstance(layers, pd.DataFrame) and len(layers) == 2 * ToyConfig().n_layer
    base = layers[layers.variant == "baseline"].set_index("layer")
    for row in measured.variants["baseline"]["layers"]:
        assert base.loc[row["layer"], "top1"] == row["top"][0] and base.loc[row["layer"], "median"] == row["median"]
    cut = layers[layers.variant == "cut"].set_index("layer")
    assert cut["top1_pct"].tolist() == measured.variants["cut"]["change_vs_baseline"]["top1_pct"]
    heads = measured.head_frame().set_index(["variant", "layer", "head"])
    assert heads.loc[("baseline", 5, 1), "head_score"] == measured.variants["baseline"]["head_scores"][5][1]
    assert len(heads) == 2 * ToyConfig().n_layer * ToyConfig().n_head


def test_run_dir_gets_results_and_figures(tmp_path):
    results = lit_massive.measure("toy", TOY_DATA, analyses=[], run_dir=tmp_path / "run")
    written = read_results(tmp_path / "run")
    assert written["variants"]["baseline"]["perplexity"] is None  # off: not named in analyses
    assert_same_numbers(written["variants"], results.variants)
    assert (tmp_path / "run" / "figures" / "baseline_layer_profile.png").is_file()


def test_bad_calls_are_one_line_errors():
    with pytest.raises(lit_massive.InputError, match="exactly one of data"):
        lit_massive.measure("toy")
    with pytest.raises(lit_massive.InputError, match="analysis 'heads' is not registered; registered: layer_profile"):
        lit_massive.measure("toy", TOY_DATA, analyses=["heads"])
    with pytest.raises(lit_massive.InputError, match="top_k=0: must be > 0"):
        lit_massive.measure("toy", TOY_DATA, top_k=0)


def test_help_documents_the_api():
    doc = lit_massive.measure.__doc__
    assert "RunResults" in doc and "layer_frame" in doc and "Example" in doc


def test_the_readme_notebook_example_runs(capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    (example,) = re.findall(r"```python\n(.*?)```", readme, re.S)
    exec(compile(example, "README.md", "exec"), {})
    shown = capsys.readouterr().out
    assert "top1_dim" in shown and len(shown.splitlines()) == 1 + ToyConfig().n_layer
