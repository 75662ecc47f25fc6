"""`compare`: several runs in one table and overlaid figures, every number as the runs'
results.json have it (read here with plain json, not the project's reader)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from helpers import run_validate, tiny_run_args
from lit_massive.cli import cli_main
from lit_massive.report import comparison

PNG_START = b"\x89PNG\r\n\x1a\n"
ALL_FIGURES = {"top1_median.png", "attention_to_massive.png", "head_scores.png"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, family_dir, corpus_jsonl) -> dict[str, Path]:
    """Three runs of two tiny families under one root: a Llama with head scores and a pruning
    variant, the same Llama without head scores, and a GPT-NeoX (another tokenizer) without."""
    root = tmp_path_factory.mktemp("compare_runs")
    llama, neox = family_dir("llama"), family_dir("gpt_neox")
    made = {
        "llama_heads": run_validate(
            root,
            *tiny_run_args(llama, corpus_jsonl, 32, 3, None, "--model.analyses.head_scores.enabled", "true"),
            "--model.variants",
            json.dumps({"cut": [[1, 0], [2, 3]]}),
        )[0],
        "llama": run_validate(root, *tiny_run_args(llama, corpus_jsonl, 32, 3))[0],
        "neox": run_validate(root, *tiny_run_args(neox, corpus_jsonl, 24, 2))[0],
    }
    return made


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _compare(*args: str) -> None:
    cli_main(["compare", *map(str, args)])


def _terminal_rows(out: str) -> list[list[str]]:
    """The table rows the terminal shows, split on the column gaps of the dashes line."""
    lines = out.splitlines()
    dashes = next(i for i, line in enumerate(lines) if line.startswith("---"))
    starts = [0] + [i + 2 for i in range(len(lines[dashes]) - 1) if lines[dashes][i : i + 2] == "  "]
    rows = []
    for line in lines[dashes + 1 :]:
        if not line.startswith(("llama", "gpt_neox")):
            break
        bounds = [*starts, len(line) + 2]
        rows.append([line[a : b - 2].strip() for a, b in zip(bounds, bounds[1:], strict=False)])
    return rows


def test_compare_writes_the_table_and_figures_with_the_runs_numbers(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    _compare(runs["llama_heads"], runs["llama"] / "results.json", runs["neox"], "--out", out)
    printed = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"comparison.md", "comparison.json", *ALL_FIGURES}
    for name in ALL_FIGURES:
        assert (out / name).read_bytes().startswith(PNG_START)
    content = json.loads((out / "comparison.json").read_text())
    llama_name, neox_name = runs["llama"].parent.name, runs["neox"].parent.name
    labels = [f"{llama_name}/version_0", f"{llama_name}/version_1", f"{neox_name}/version_0"]
    assert [r["label"] for r in content["runs"]] == labels
    rows = content["rows"]
    # one row per run x variant x corpus, in the order given
    expected_rows = [(labels[0], "baseline"), (labels[0], "cut"), (labels[1], "baseline"), (labels[2], "baseline")]
    assert [(r["run"], r["variant"]) for r in rows] == expected_rows
    terminal = _terminal_rows(printed)
    assert [(t[0], t[1]) for t in terminal] == expected_rows
    markdown = (out / "comparison.md").read_text()
    for row, cells, (label, variant) in zip(rows, terminal, expected_rows, strict=True):
        run_dir = runs[{labels[0]: "llama_heads", labels[1]: "llama", labels[2]: "neox"}[label]]
        results = _results(run_dir)
        entry = results["variants"][variant]
        peak, peak_layer = max((r["top1_over_median"], r["layer"]) for r in entry["layers"])
        at_peak = entry["layers"][peak_layer]
        params = results["parallel"]["parameter_bytes_full"] // 4  # float32
        assert results["model"]["parameter_dtype"] == "float32"
        expected = {
            "model": results["model"]["name_or_path"],
            "family": results["model"]["model_type"],
            "parameters": params,
            "n_layer": results["model"]["n_layer"],
            "n_embd": results["model"]["n_embd"],
            "first_massive_layer": entry["first_massive_layer"],
            "peak_top1_over_median": peak,
            "peak_layer": peak_layer,
            "top1_dim": at_peak["top1_dim"],
            "top1_token": at_peak["top1_token"],
            "perplexity": entry["perplexity"],
            "bits_per_byte": entry["bits_per_byte"],
            "word_perplexity": entry["word_perplexity"],
            "corpus": f"{Path(results['data']['data_files'][0]).name} ({results['data']['num_windows']} x "
            f"{results['data']['seq_len']})",
        }
        assert {k: row[k] for k in expected} == expected
        assert row["perplexity"] is not None and row["bits_per_byte"] is not None
        # the shown cells are those numbers, rounded
        assert cells[2] == expected["corpus"]
        assert cells[4] == expected["family"]
        assert cells[6] == ("-" if entry["first_massive_layer"] is None else str(entry["first_massive_layer"]))
        assert cells[7] == f"{peak:.1f} ({peak_layer})"
        assert cells[8] == f"{at_peak['top1_dim']} {at_peak['top1_token']!r}"
        assert cells[9] == f"{entry['perplexity']:.4f}" and cells[10] == f"{entry['bits_per_byte']:.4f}"
        assert cells[11] == f"{entry['word_perplexity']:.4f}"
        if variant == "baseline":
            assert cells[12:] == ["-", "-"]
        else:
            change = entry["change_vs_baseline"]
            assert cells[12] == f"{change['mean_over_layers']['top1_pct']:+.2f}"
            assert cells[13] == f"{change['perplexity_pct']:+.2f}"
            assert row["perplexity_pct"] == change["perplexity_pct"]
        assert "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" in markdown
    # Llama's and GPT-NeoX's tokenizers differ (two checkpoints): the note says what compares
    assert content["tokenizers_differ"] is True
    note = "across tokenizers only bits per byte (and word perplexity) compare"
    assert note in printed and note in markdown
    for run_dir, named in ((runs["llama"], f"{labels[0]}, {labels[1]}"), (runs["neox"], labels[2])):
        data, model = _results(run_dir)["data"], _results(run_dir)["model"]
        line = f"  tokenizer {data['tokenizer']} (vocab {model['vocab_size']}): {named}"  # the two Llamas share one
        assert line in printed.splitlines()
    assert "corpora differ: numbers compare only between rows of the same corpus" in printed  # 3 x 32 vs 2 x 24
    assert f"Comparison: {out} (" in printed.splitlines()[-1]


def test_figures_overlay_every_run_and_line_up_depths(runs):
    loaded = comparison.load_runs([str(runs["llama_heads"]), str(runs["neox"])])
    figures, skipped = comparison.comparison_figures(loaded, relative=True)
    assert skipped == [] and set(figures) == {"top1_median", "attention_to_massive", "head_scores"}
    depth = figures["top1_median"].axes[0]
    assert depth.get_yscale() == "log"
    solid = [line for line in depth.get_lines() if line.get_linestyle() == "-"]
    labels = [line.get_label() for line in solid]
    heads, neox = _results(runs["llama_heads"]), _results(runs["neox"])
    # the runs' windows differ (3 x 32 and 2 x 24 tokens): each label says its corpus
    on = [f"{Path(r['data']['data_files'][0]).name} ({r['data']['num_windows']} x {r['data']['seq_len']})"
          for r in (heads, neox)]  # fmt: skip
    assert labels == [f"{loaded[0].label}, {on[0]}", f"{loaded[0].label} [cut], {on[0]}", f"{loaded[1].label}, {on[1]}"]
    assert list(solid[0].get_ydata()) == [r["top"][0] for r in heads["variants"]["baseline"]["layers"]]
    assert list(solid[2].get_ydata()) == [r["top"][0] for r in neox["variants"]["baseline"]["layers"]]
    for line in solid:  # relative depth: first block at 0, last at 1, whatever the depth
        assert line.get_xdata()[0] == 0.0 and line.get_xdata()[-1] == 1.0
    # attention to massive tokens: only the run with head scores (GPT-NeoX's is null)
    assert neox["variants"]["baseline"]["attention_to_massive"] is None
    attention = figures["attention_to_massive"].axes[0].get_lines()
    assert [line.get_label() for line in attention] == labels[:2]
    assert list(attention[0].get_ydata()) == heads["variants"]["baseline"]["attention_to_massive"]
    ticks = [t.get_text() for t in figures["head_scores"].axes[0].get_yticklabels()]
    assert ticks == labels[:2]
    by_block = comparison.comparison_figures(loaded)[0]["top1_median"].axes[0].get_lines()[0]
    assert list(by_block.get_xdata()) == list(range(heads["model"]["n_layer"]))


def test_figures_without_data_are_skipped_with_a_line(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    _compare(runs["llama"], runs["neox"], "--out", out)
    printed = capsys.readouterr().out
    assert "no attention-to-massive figure: no run has head scores" in printed
    assert "no head-score figure: no run has head scores" in printed
    assert {p.name for p in out.iterdir()} == {"comparison.md", "comparison.json", "top1_median.png"}


def test_one_tokenizer_no_note(runs, tmp_path, capsys):
    _compare(runs["llama_heads"], runs["llama"], "--out", tmp_path / "cmp")
    printed = capsys.readouterr().out
    assert "tokenizers differ" not in printed
    assert _header(printed) == list(comparison.COLUMNS)  # one precision and dtype: no column says them
    assert "runs differ in" not in printed and "(interrupted)" not in printed
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["tokenizers_differ"] is False


def test_force_replaces_an_earlier_comparison(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    _compare(runs["llama_heads"], runs["neox"], "--out", out)
    (out / "mine.txt").write_text("kept")
    _compare(runs["llama"], runs["neox"], "--out", out, "--force")
    capsys.readouterr()
    # the earlier head-score figures would read as this comparison's: gone; other files stay
    assert {p.name for p in out.iterdir()} == {"comparison.md", "comparison.json", "top1_median.png", "mine.txt"}
    assert [r["path"] for r in json.loads((out / "comparison.json").read_text())["runs"]] == [
        str(runs["llama"] / "results.json"),
        str(runs["neox"] / "results.json"),
    ]


@pytest.mark.parametrize(
    "case", ["missing", "unfinished", "config_yaml", "not_results", "single", "none", "twice", "out_exists"]
)
def test_bad_input_is_one_line_before_anything_is_written(runs, tmp_path, capsys, case):
    out = tmp_path / "cmp"
    first = str(runs["llama"])
    not_results = tmp_path / "other.json"
    not_results.write_text(json.dumps({"rows": []}))
    unfinished = tmp_path / "lightning_logs" / "llama" / "version_3"  # what a failed or stopped run leaves
    unfinished.mkdir(parents=True)
    shutil.copy(runs["llama"] / "config.yaml", unfinished)
    args, expected = {
        "missing": ([first, str(tmp_path / "nope")], "run '" + str(tmp_path / "nope") + "' does not exist"),
        "unfinished": ([first, str(unfinished)], f"run '{unfinished}' has no results.json: the run did not finish"),
        "config_yaml": ([first, str(runs["llama"] / "config.yaml")], "is not valid JSON"),
        "not_results": ([first, str(not_results)], "has no 'variants'; give the results.json of a lit_massive run"),
        "single": ([first], "compare needs two or more runs"),
        "none": ([], "compare needs two or more runs"),
        "twice": ([first, first + "/results.json"], "is given twice"),
        "out_exists": ([first, str(runs["neox"])], f"--out {out} is not empty"),
    }[case]
    if case == "out_exists":
        out.mkdir()
        (out / "comparison.md").write_text("an earlier one")
    with pytest.raises(SystemExit) as info:
        _compare(*args, "--out", out)
    message = str(info.value.code)
    assert message.startswith("lit_massive: error: ") and "\n" not in message
    assert expected in message
    assert capsys.readouterr().out == ""
    if case == "out_exists":
        assert [p.name for p in out.iterdir()] == ["comparison.md"] and (out / "comparison.md").read_text() == (
            "an earlier one"
        )
    else:
        assert not out.exists()


def test_labels_say_the_model_and_stay_unique():
    paths = [
        Path("/a/lightning_logs/gpt2/version_0/results.json"),
        Path("/b/lightning_logs/gpt2/version_0/results.json"),
        Path("/a/lightning_logs/Llama-2-7b-hf/version_3/results.json"),
        Path("/a/elsewhere/results.json"),
    ]
    models = ["gpt2", "gpt2", "meta-llama/Llama-2-7b-hf", "toy"]
    assert comparison.run_labels(paths, models) == [
        "a/lightning_logs/gpt2/version_0",
        "b/lightning_logs/gpt2/version_0",
        "Llama-2-7b-hf/version_3",
        "toy/elsewhere",
    ]


def _header(printed: str) -> list[str]:
    """The terminal table's column names (separated by two spaces or more)."""
    return re.split(r"\s{2,}", printed.splitlines()[0].strip())


@pytest.fixture(scope="module")
def precisions(runs, family_dir, corpus_jsonl) -> dict[str, Path]:
    """The Llama run of `runs` (32-true, float32) again, in bf16-mixed and loaded as bfloat16,
    under the same root (so their labels are version_N of one model)."""
    root = runs["llama"].parents[2]
    args = tiny_run_args(family_dir("llama"), corpus_jsonl, 32, 3)
    return {
        "bf16_mixed": run_validate(root, *args, "--trainer.precision", "bf16-mixed")[0],
        "bfloat16": run_validate(root, *args, "--model.dtype", "bfloat16")[0],
    }


def test_runs_that_differ_in_precision_or_dtype_say_which(runs, precisions, tmp_path, capsys):
    given = [runs["llama"], precisions["bf16_mixed"], precisions["bfloat16"]]
    out = tmp_path / "cmp"
    _compare(*given, "--out", out, "--relative-depth")
    printed = capsys.readouterr().out
    results = [_results(r) for r in given]
    said = [(r["precision"], r["model"]["dtype"]) for r in results]
    assert said == [("32-true", "float32"), ("bf16-mixed", "float32"), ("32-true", "bfloat16")]
    # the parameters had the dtype asked for: a parameter-dtype column would repeat the dtype one
    assert [r["model"]["parameter_dtype"] for r in results] == ["float32", "float32", "bfloat16"]
    head = _header(printed)
    assert head[3:6] == ["model", "precision", "dtype"] and "parameter dtype" not in head
    assert [tuple(cells[4:6]) for cells in _terminal_rows(printed)] == said
    content = json.loads((out / "comparison.json").read_text())
    assert [(r["precision"], r["dtype"]) for r in content["rows"]] == said
    note = "runs differ in precision and dtype: each run's is in the table and in the figure labels"
    assert note in printed.splitlines() and f"- {note}" in (out / "comparison.md").read_text()
    # the figures' labels say it too: without it the three lines read as one run three times
    labels = [r["label"] for r in content["runs"]]
    tagged = [f"{label} ({p}, dtype {d})" for label, (p, d) in zip(labels, said, strict=True)]
    figures, _ = comparison.comparison_figures(comparison.load_runs([str(r) for r in given]), relative=True)
    solid = [line for line in figures["top1_median"].axes[0].get_lines() if line.get_linestyle() == "-"]
    assert [line.get_label() for line in solid] == tagged
    depth = figures["top1_median"]
    assert [t.get_text() for t in (depth.axes[0].get_legend() or depth.legends[0]).texts] == tagged


def _off_the_chart(figure) -> bool:
    """Whether the figure's legend lies outside its chart and inside the figure."""
    figure.draw_without_rendering()
    ax = figure.axes[0]
    legend = (ax.get_legend() or figure.legends[0]).get_window_extent()
    inside = figure.bbox.x0 <= legend.x0 and legend.x1 <= figure.bbox.x1 and figure.bbox.y0 <= legend.y0
    return inside and not legend.overlaps(ax.get_window_extent())


def test_the_depth_legends_stay_off_the_lines(runs):
    """With relative depth every line spans the whole x axis: a legend inside would cover one.
    Short labels go beside the chart, long ones (here: with each run's corpus) under it."""
    loaded = comparison.load_runs([str(runs["llama_heads"]), str(runs["neox"])])
    figures, _ = comparison.comparison_figures(loaded, relative=True)
    for key in ("top1_median", "attention_to_massive"):
        assert _off_the_chart(figures[key]), key
        assert figures[key].legends and figures[key].axes[0].get_legend() is None  # long labels: under it
    entry = _results(runs["llama"])["variants"]["baseline"]
    short = comparison.depth_figure([("a/version_0", entry), ("b/version_0", entry)], relative=True)
    assert _off_the_chart(short) and short.axes[0].get_legend() is not None  # beside it


def test_an_interrupted_run_is_marked(runs, tmp_path, capsys):
    """A Ctrl-C while a run wrote its figures leaves its results.json complete and an
    INTERRUPTED file beside it (report/callback.py): compare reads it, and says so."""
    from lit_massive.report.callback import RunReport

    stopped = tmp_path / "lightning_logs" / runs["llama"].parent.name / "version_5"
    shutil.copytree(runs["llama"], stopped)
    RunReport().after_interrupt(stopped)  # what the interrupt handler leaves
    assert (stopped / "INTERRUPTED").is_file()
    out = tmp_path / "cmp"
    _compare(stopped, runs["neox"], "--out", out)
    printed = capsys.readouterr().out
    label, other = f"{runs['llama'].parent.name}/version_5", f"{runs['neox'].parent.name}/version_0"
    assert [cells[0] for cells in _terminal_rows(printed)] == [f"{label} (interrupted)", other]
    note = (
        f"{label} (interrupted): stopped while writing its figures (an INTERRUPTED file beside its results.json); "
        "the results.json this comparison reads is complete, its figures and TensorBoard data may not be"
    )
    assert note in printed.splitlines() and f"- {note}" in (out / "comparison.md").read_text()
    content = json.loads((out / "comparison.json").read_text())
    assert [r["interrupted"] for r in content["runs"]] == [True, False]
    assert [r["interrupted"] for r in content["rows"]] == [True, False]
