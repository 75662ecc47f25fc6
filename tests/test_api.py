"""The Python API: `measure` runs the same pass as `validate` and returns its RunResults."""

import logging
import math
import re
from pathlib import Path

import lightning as L
import pandas as pd
import pytest

import lit_massive
from helpers import assert_same_numbers, run_validate
from lit_massive.data import WindowsDataModule
from lit_massive.errors import RunWarning
from lit_massive.models.toy import ToyConfig, build_toy_model, build_toy_tokenizer, corpus_path
from lit_massive.results.schema import read_results

TOY_DATA = {"dataset": "toy", "seq_len": 64, "num_sequences": 4, "batch_size": 2}
VARIANTS = {"cut": [[5, 1], [8, 3]]}


@pytest.fixture(scope="module")
def measured():
    return lit_massive.measure("toy", TOY_DATA, analyses=["head_scores", "perplexity"], variants=VARIANTS)


def test_measure_equals_the_cli(tmp_path, measured):
    _, cli = run_validate(
        tmp_path,
        "--model.model_name_or_path", "toy", "--data.dataset", "toy", "--data.seq_len", "64",
        "--data.num_sequences", "4", "--data.batch_size", "2", "--model.analyses.head_scores.enabled", "true",
        "--model.analyses.head_internals.enabled", "false", "--model.analyses.super_weights.enabled", "false",
        "--model.variants", '{"cut": [[5, 1], [8, 3]]}',
    )  # fmt: skip
    assert_same_numbers(measured.to_json()["variants"], cli["variants"])
    # sink_rate comes with head_scores (one option); the internals were not named
    assert measured.analyses == [
        "layer_profile",
        "head_scores",
        "sink_rate",
        "learned_sinks",
        "secondary_sinks",
        "perplexity",
        "locator",
    ]


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


# every per-head figure of a run with head scores and the attention internals, as the head frame names it
HEAD_COLUMNS = {
    "head_scores": "head_score", "massive_token_scores": "massive_token_score",
    **{key: key for key in ("value_norm_first", "value_norm_rest", "head_output_norm", "massive_update_norm",
                            "other_update_norm", "massive_update_cosine", "first_token_logit_gap", "query_norm",
                            "key_norm_first", "key_norm_rest", "query_key_cos_first", "query_key_cos_rest")},
}  # fmt: skip
INTERNALS = [
    "head_scores", "value_norms", "head_output_norm", "massive_update", "first_token_logit_gap", "logit_factors",
]  # fmt: skip


@pytest.fixture(scope="module")
def measured_all():
    """Head scores, every attention internal, the outlier statistics and the super-weight locator on."""
    analyses = [*INTERNALS, "outlier_stats", "super_weights"]
    return lit_massive.measure("toy", TOY_DATA, analyses=analyses, variants=VARIANTS)


def _nan_as_none(values: list) -> list:
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values]


def test_head_frame_holds_every_per_head_figure(measured_all):
    frame = measured_all.head_frame()
    assert list(frame.columns) == ["variant", "layer", "head", *HEAD_COLUMNS.values()]
    n_layer, n_head = ToyConfig().n_layer, ToyConfig().n_head
    for name, entry in measured_all.variants.items():
        # every (L, H) key of the entry is a column; `received` is (L, positions), per layer
        grids = {k for k, v in entry.items() if isinstance(v, list) and len(v) == n_layer
                 and all(isinstance(r, list) and len(r) == n_head for r in v)}  # fmt: skip
        assert grids - {"received"} == set(HEAD_COLUMNS)
        rows = frame[frame.variant == name].sort_values(["layer", "head"])
        assert rows[["layer", "head"]].values.tolist() == [[la, h] for la in range(n_layer) for h in range(n_head)]
        for key, column in HEAD_COLUMNS.items():
            assert _nan_as_none(rows[column].tolist()) == [v for row in entry[key] for v in row], (name, key)
    assert frame.set_index(["variant", "layer", "head"]).loc[("baseline", 5, 1), "head_score"] > 0.99  # the sink


def test_layer_frame_holds_every_per_layer_figure(measured_all):
    frame = measured_all.layer_frame()
    for name, entry in measured_all.variants.items():
        rows = frame[frame.variant == name].sort_values("layer")
        assert rows.layer.tolist() == list(range(ToyConfig().n_layer))
        for key in ("attention_to_massive", "sink_rate"):
            assert rows[key].tolist() == entry[key], (name, key)
        for key in ("kurtosis", "top_direction_share", "matrix_entropy", "outlier_left_out", "top1_dim"):
            assert rows[key].tolist() == [row[key] for row in entry["layers"]], (name, key)
        for side in ("input", "output"):
            for key in ("value", "channel", "token"):
                assert rows[f"mlp_down_{side}_{key}"].tolist() == [r[side][key] for r in entry["mlp_down"]]
        if name != "baseline":
            assert rows.median_pct.tolist() == entry["change_vs_baseline"]["median_pct"]
    base = frame[frame.variant == "baseline"].set_index("layer")
    assert base.loc[ToyConfig().massive_layer, "mlp_down_output_channel"] == ToyConfig().massive_dim


def test_head_frame_without_head_scores_is_empty():
    frame = lit_massive.measure("toy", {**TOY_DATA, "num_sequences": 2}, analyses=[]).head_frame()
    assert frame.empty and list(frame.columns) == ["variant", "layer", "head", "head_score", "massive_token_score"]


LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
CHATTER = ("GPU available", "TPU available", "Tip:")


class Lines(logging.Handler):
    """What a logger prints, one message per line (its filters applied first)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lightning_lines():
    """What Lightning's info loggers print, as a fresh process has them: an earlier CLI run in
    this process (`quiet_lightning`) quietened them for good, which would hide what `measure` prints."""
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    kept = [lg.filters[:] for lg in loggers]
    lines = Lines()
    for lg in loggers:
        lg.filters.clear()
        lg.addHandler(lines)
    yield lines
    for lg, filters in zip(loggers, kept, strict=True):
        lg.removeHandler(lines)
        lg.filters[:] = filters


def test_measure_is_as_quiet_as_the_cli(lightning_lines):
    """No device lines, tips or Lightning's own deprecation warning; the project's warnings
    still come; and only for the call: a user's own Lightning run afterwards keeps its lines."""
    twice = {"twice": [[5, 1], [5, 1]]}
    with pytest.warns(RunWarning, match="variant 'twice': head \\(5, 1\\) listed twice") as caught:  # every warning
        lit_massive.measure("toy", {**TOY_DATA, "num_sequences": 2}, analyses=[], variants=twice)
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
    assert not [line for line in lightning_lines.lines if line.startswith(CHATTER) or "💡" in line]
    L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    assert any(line.startswith("GPU available") for line in lightning_lines.lines)


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
