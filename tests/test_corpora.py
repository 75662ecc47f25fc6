"""Several corpora in one run (`data.corpora`): each corpus's numbers are those of a run on it
alone, results.json, TensorBoard, figures, the terminal and `compare` carry the corpus, bad
names stop the run in one line, and the shipped three-corpus config parses."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import (
    REPO,
    assert_same_numbers,
    cli_output,
    run_validate,
    run_validate_ddp,
    tensorboard_events,
    toy_run_args,
)
from lit_massive.cli import cli_main
from lit_massive.models.toy import corpus_path

# a block edit (it counts what it changes) and its control (seeded by window index), on each corpus
VARIANTS = {"zero": {"set_massive": {"layer": 2, "to": "zero"}}, "control": {"set_random": {"layer": 2}}}
# the toy in 2 windows of 128 tokens per corpus, in one batch (super weights off: they cost half a run)
TOY = ["--model.model_name_or_path", "toy", "--data.seq_len", "128", "--data.num_sequences", "2", "--data.batch_size",
       "2", "--model.analyses.super_weights.enabled", "false", "--model.variants", json.dumps(VARIANTS)]  # fmt: skip


@pytest.fixture(scope="module")
def halves(tmp_path_factory) -> dict[str, Path]:
    """The bundled corpus's first and second halves, as two text files: two corpora."""
    lines = corpus_path().read_text(encoding="utf-8").splitlines(keepends=True)
    folder = tmp_path_factory.mktemp("corpora")
    out = {"wiki1": folder / "first.txt", "wiki2": folder / "second.txt"}
    out["wiki1"].write_text("".join(lines[: len(lines) // 2]), encoding="utf-8")
    out["wiki2"].write_text("".join(lines[len(lines) // 2 :]), encoding="utf-8")
    return out


def _corpora(files: dict[str, Path]) -> str:
    return json.dumps([{"name": name, "data_files": str(path)} for name, path in files.items()])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, halves) -> dict[str, Any]:
    """One run over both corpora (and what it printed), and one run on the second corpus alone."""
    root = tmp_path_factory.mktemp("corpora_runs")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        made = {"both": run_validate(root, *TOY, "--data.corpora", _corpora(halves))}
    made["printed"] = printed.getvalue()
    made["wiki2"] = run_validate(root, *TOY, "--data.data_files", str(halves["wiki2"]))
    return made


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_the_second_corpus_equals_a_run_on_it_alone(runs):
    (_, both), (_, second) = runs["both"], runs["wiki2"]
    # the default corpus keeps today's keys; the other one is under corpora
    assert both["corpus"] == "wiki1" and list(both["corpora"]) == ["wiki2"]
    assert second["corpus"] == "second" and second["corpora"] == {}  # one corpus: named after its file
    assert both["corpora"]["wiki2"]["data"] == second["data"]
    assert_same_numbers(both["corpora"]["wiki2"]["variants"], second["variants"])
    one, other = both["variants"], both["corpora"]["wiki2"]["variants"]
    assert one["baseline"]["perplexity"] != other["baseline"]["perplexity"]  # two texts, two sets of numbers
    for entries in (one, other):
        assert entries["baseline"]["bits_per_byte"] is not None and entries["baseline"]["massive"]
        assert sum(b["edited"] for b in entries["zero"]["edit"]["blocks"]) > 0  # each corpus counts its own edits
    assert both["timing"]["tokens"] == 2 * second["timing"]["tokens"]  # every corpus's windows
    # the terminal: one row per corpus x variant, the corpus first
    assert runs["printed"].splitlines()[0].split()[:2] == ["corpus", "variant"]
    assert [line.split()[:2] for line in runs["printed"].splitlines() if line.startswith("wiki")] == [
        [corpus, variant] for corpus in ("wiki1", "wiki2") for variant in ("baseline", *VARIANTS)
    ]


def test_tensorboard_and_figures_carry_the_corpus(runs):
    run_dir, results = runs["both"]
    baseline, zero = tensorboard_events(run_dir, "baseline"), tensorboard_events(run_dir, "zero")
    for prefix, entries in (("", results["variants"]), ("wiki2/", results["corpora"]["wiki2"]["variants"])):
        top1 = [e.value for e in baseline.Scalars(f"{prefix}profile/top1")]
        assert top1 == pytest.approx([row["top"][0] for row in entries["baseline"]["layers"]], rel=1e-6)
        assert f"{prefix}figures/layer_profile" in zero.Tags()["images"]
    assert "wiki2/compare/figures/profiles" in tensorboard_events(run_dir).Tags()["images"]
    assert (run_dir / "figures" / "baseline_layer_profile.png").is_file()
    assert (run_dir / "figures" / "wiki2" / "baseline_layer_profile.png").is_file()
    assert (run_dir / "figures" / "wiki2" / "compare_profiles.png").is_file()


def test_compare_shows_one_row_per_run_variant_and_corpus(runs, tmp_path, capsys):
    (both_dir, both), (second_dir, second) = runs["both"], runs["wiki2"]
    cli_main(["compare", str(both_dir), str(second_dir), "--out", str(tmp_path / "cmp")])
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["rows"]
    two, alone = rows[0]["run"], rows[-1]["run"]
    assert [(r["run"], r["corpus"], r["variant"]) for r in rows] == [
        *((two, "wiki1: first.txt (2 x 128)", v) for v in both["variants"]),
        *((two, "wiki2: second.txt (2 x 128)", v) for v in both["corpora"]["wiki2"]["variants"]),
        *((alone, "second.txt (2 x 128)", v) for v in second["variants"]),
    ]
    entries = [*both["variants"].values(), *both["corpora"]["wiki2"]["variants"].values(), *second["variants"].values()]
    assert [(r["perplexity"], r["bits_per_byte"], r["peak_top1_over_median"]) for r in rows] == [
        (e["perplexity"], e["bits_per_byte"], max(row["top1_over_median"] for row in e["layers"])) for e in entries
    ]
    printed = capsys.readouterr().out
    assert sum("wiki2: second.txt (2 x 128)" in line for line in printed.splitlines()) == len(second["variants"])


def test_the_default_corpus_equals_a_run_on_it_alone(runs, halves, tmp_path):
    _, both = runs["both"]
    _, first = run_validate(tmp_path, *TOY, "--data.data_files", str(halves["wiki1"]))
    assert both["data"] == first["data"]
    assert_same_numbers(both["variants"], first["variants"])


@pytest.mark.parametrize(
    "corpora, variants, expected",
    [
        ([{"name": "wiki 1"}], None, ["name 'wiki 1' is not valid", "letters, digits"]),
        ([{"name": "a/b"}], None, ["name 'a/b' is not valid"]),
        ([{"name": ""}], None, ["name '' is not valid"]),
        ([{"name": "a"}, {"name": "a"}], None, ["name 'a' is given twice"]),
        ([], None, ["data.corpora is an empty list"]),
        ([{"dataset": "toy"}], None, ["data.corpora: a corpus needs name"]),
        ([{"name": "a", "datset": "toy"}], None, ["unknown key 'datset' (did you mean 'dataset'?)"]),
        ([{"name": "a"}, {"name": "b"}], {"cut": [[5, 1]], "b/cut": [[5, 1]]}, ["variant name 'b/cut'", "hold '/'"]),
    ],
)
def test_bad_corpora_are_one_line_and_leave_no_run_directory(tmp_path, halves, corpora, variants, expected):
    files = iter(halves.values())
    entries = [{**c, "data_files": str(next(files))} if c.get("name") else c for c in corpora]
    extra = ["--model.variants", json.dumps(variants)] if variants else []
    args = ["--model.model_name_or_path", "toy", "--data.seq_len", "128", "--data.num_sequences", "2",
            "--data.corpora", json.dumps(entries)]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        run_validate(tmp_path, *args, *extra)
    message = str(info.value.code)
    assert message.startswith("lit_massive: error: ") and "\n" not in message
    assert all(text in message for text in expected), message
    assert not list(tmp_path.glob("lightning_logs/*"))


def test_corpora_refuse_the_top_level_dataset_options(tmp_path, halves):
    with pytest.raises(SystemExit) as info:
        run_validate(tmp_path, *toy_run_args("--data.corpora", _corpora(halves)))  # toy_run_args sets data.dataset
    assert "data.dataset='toy' with data.corpora" in str(info.value.code)
    assert not list(tmp_path.glob("lightning_logs/*"))


def test_shipped_config_names_three_corpora(capsys):
    """configs/corpora.yaml needs the hub (C4 and PG-19 streamed): here it only parses."""
    printed = yaml.safe_load(cli_output(capsys, "validate", "--config", str(REPO / "configs" / "corpora.yaml"),
                                        "--print_config"))  # fmt: skip
    corpora = printed["data"]["corpora"]
    assert [(c["name"], c["dataset"], c["config_name"], c["split"], c["streaming"]) for c in corpora] == [
        ("wikitext", "Salesforce/wikitext", "wikitext-2-raw-v1", "test", False),
        ("c4", "allenai/c4", "en", "validation", True),
        ("pg19", "emozilla/pg19", None, "test", True),
    ]
    assert printed["model"]["model_name_or_path"] == "gpt2"


@pytest.mark.slow  # two processes
@pytest.mark.parametrize("strategy", ["ddp", "model_parallel"])
def test_two_processes_equal_one_on_every_corpus(tmp_path, tiny_gpt2_dir, corpus_jsonl, halves, strategy):
    """5 windows per corpus, split 3 + 2: the second corpus's numbers, like the default's, are
    one process's; sharded, every corpus's loader keeps the processes in lockstep."""
    corpora = [{"name": "jsonl", "data_files": str(corpus_jsonl)}, {"name": "half", "data_files": str(halves["wiki2"])}]
    args = [
        "--model.model_name_or_path",
        str(tiny_gpt2_dir),
        "--data.corpora",
        json.dumps(corpora),
        "--data.seq_len",
        "16",
        "--data.num_sequences",
        "5",
        "--data.batch_size",
        "2",
        "--model.analyses.head_scores.enabled",
        "true",
        "--model.variants",
        json.dumps({"cut": [[1, 2]]}),
    ]
    _, single = run_validate(tmp_path / "one", *args)
    double = run_validate_ddp(tmp_path / "two", *args, strategy=strategy)
    assert double["world_size"] == 2 and list(double["corpora"]) == ["half"]
    assert_same_numbers(double["variants"], single["variants"])
    assert_same_numbers(double["corpora"]["half"]["variants"], single["corpora"]["half"]["variants"])
