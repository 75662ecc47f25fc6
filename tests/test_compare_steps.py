"""`compare` over checkpoints of one model: runs ordered by training step (revision `stepN`,
`stepN` / `checkpoint-N` folders), a step column, and each statistic drawn against the step.

The runs are one real tiny run's results.json, copied once per step with planted values
(first massive block, peak top-1/median, located massive activations, model sink rate,
perplexity), so each test knows what every figure must plot."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from helpers import run_validate, tiny_run_args
from lit_massive.cli import cli_main
from lit_massive.report import comparison, step_figures
from lit_massive.report.comparison import Run, model_run_name, order_by_step, training_step
from lit_massive.results.schema import read_results

PNG_START = b"\x89PNG\r\n\x1a\n"
MODEL = "EleutherAI/pythia-160m"
STEP_FIGURES = {
    "step_first_massive_layer.png",
    "step_peak_top1_over_median.png",
    "step_massive_dims.png",
    "step_model_sink_rate.png",
    "step_perplexity.png",
}
GIVEN = [1000, 0, 143000, 8, 1]  # the order the runs are given in
# per step: first massive block, peak top-1/median, located massive (dim, value) entries, sink rate, perplexity
PLANTED = {
    0: (None, 3.0, [], 0.0, 2090.0),
    1: (2, 50.0, [(7, 150.0), (11, -120.0)], 0.0, 1500.0),
    8: (1, 900.0, [(7, 400.0), (11, 300.0), (2, 110.0)], 0.1, 300.0),
    1000: (1, 4000.0, [(7, -2000.0), (11, -900.0), (11, 850.0), (2, 130.0), (5, 105.0), (5, -101.0)], 0.25, 40.0),
    143000: (0, 20000.0, [(7, 5000.0), (11, 1500.0), (30, 101.0)], 0.5, 12.5),
}
STEPS = sorted(PLANTED)
# the four dims with the largest |value| over all steps (dim 30's 101 is the fifth), and each one's largest per step
DIMS = {7: [None, 150.0, 400.0, 2000.0, 5000.0], 11: [None, 120.0, 300.0, 900.0, 1500.0],
        2: [None, None, 110.0, 130.0, None], 5: [None, None, None, 105.0, None]}  # fmt: skip


@pytest.fixture(scope="module")
def template(tmp_path_factory, family_dir, corpus_jsonl) -> dict:
    """The results.json of one real tiny run (a Llama; no head scores, so compare draws no
    head-score figures, which these tests do not look at: the sink rate is planted)."""
    run_dir, _ = run_validate(
        tmp_path_factory.mktemp("template"), *tiny_run_args(family_dir("llama"), corpus_jsonl, 32, 2)
    )
    return json.loads((run_dir / "results.json").read_text())


def _planted_entry(entry: dict, step: int) -> dict:
    """The template's baseline with this step's planted values."""
    first, peak, massive, sink, ppl = PLANTED[step]
    entry = copy.deepcopy(entry)
    entry.update(first_massive_layer=first, model_sink_rate=sink, perplexity=ppl)
    for row in entry["layers"]:  # the peak at block 1, a tenth of it elsewhere
        row["top1_over_median"] = peak if row["layer"] == 1 else peak / 10
    located = entry["massive"][0] if entry["massive"] else {"position": 0, "token_id": 0, "token": "x", "fraction": 1.0}
    entry["massive"] = [{**located, "layer": i % 3, "dim": d, "value": v} for i, (d, v) in enumerate(massive)]
    return entry


def write_run(root: Path, template: dict, step: int | None, model: dict, name: str | None = None) -> Path:
    """A run directory (`lightning_logs/<model@revision>/version_0`) whose results.json is the
    template with `model` merged into its model section and `step`'s planted values; a
    `cut` variant beside the baseline whose perplexity is 10x (the step figures draw the baseline)."""
    results = copy.deepcopy(template)
    results["model"].update(model)
    baseline = _planted_entry(results["variants"]["baseline"], 1000 if step is None else step)
    results["variants"] = {"baseline": baseline, "cut": {**baseline, "perplexity": 10 * baseline["perplexity"]}}
    m = results["model"]
    run_dir = root / "lightning_logs" / (name or model_run_name(m["name_or_path"], m.get("revision"))) / "version_0"
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps(results))
    assert read_results(run_dir)["model"]["name_or_path"] == m["name_or_path"]  # the project's reader takes it
    return run_dir


@pytest.fixture(scope="module")
def stepped(tmp_path_factory, template) -> list[Path]:
    """Pythia-like hub revisions of one model, in the GIVEN (not the step) order."""
    root = tmp_path_factory.mktemp("steps")
    return [write_run(root, template, s, {"name_or_path": MODEL, "revision": f"step{s}"}) for s in GIVEN]


def _compare(capsys, *args) -> str:
    cli_main(["compare", *map(str, args)])
    return capsys.readouterr().out


def _table(printed: str) -> list[list[str]]:
    """The terminal table's rows as cells (split on the column gaps of the dashes line)."""
    lines = printed.splitlines()
    dashes = next(i for i, line in enumerate(lines) if line.startswith("---"))
    starts = [0] + [i + 2 for i in range(len(lines[dashes]) - 1) if lines[dashes][i : i + 2] == "  "]
    rows = []
    for line in lines[dashes + 1 :]:
        if not line.startswith("pythia-160m"):
            break
        bounds = [*starts, len(line) + 2]
        rows.append([line[a : b - 2].strip() for a, b in zip(bounds, bounds[1:], strict=False)])
    return rows


def test_rows_come_in_step_order_with_a_step_column_and_the_step_figures(stepped, tmp_path, capsys):
    out = tmp_path / "cmp"
    printed = _compare(capsys, *stepped, "--out", out)
    labels = [f"pythia-160m@step{s}/version_0" for s in STEPS]
    expected = [(label, str(s), v) for label, s in zip(labels, STEPS, strict=True) for v in ("baseline", "cut")]
    header = printed.splitlines()[0].split()
    assert header[:3] == ["run", "step", "variant"]
    assert [tuple(r[:3]) for r in _table(printed)] == expected
    content = json.loads((out / "comparison.json").read_text())
    assert content["by_training_step"] is True
    assert [(r["label"], r["training_step"]) for r in content["runs"]] == list(zip(labels, STEPS, strict=True))
    rows = content["rows"]
    assert [(r["run"], str(r["training_step"]), r["variant"]) for r in rows] == expected
    assert {(r["model"], r["revision"], r["gguf_file"]) for r in rows} == {(MODEL, f"step{s}", None) for s in STEPS}
    assert [r["perplexity"] for r in rows[::2]] == [PLANTED[s][4] for s in STEPS]
    assert STEP_FIGURES <= set(content["figures"])
    assert set(content["figures"]) <= {p.name for p in out.iterdir()}
    for name in STEP_FIGURES:
        assert (out / name).read_bytes().startswith(PNG_START)
    markdown = (out / "comparison.md").read_text()
    assert markdown.startswith("# Comparison of runs\n\n| run | step | variant | corpus |")
    assert f"| {labels[0]} | 0 | baseline |" in markdown
    assert all(f"![{Path(name).stem}]({name})" in markdown for name in STEP_FIGURES)
    assert f"runs in training-step order: checkpoints of {MODEL}" in printed and "no training-step" not in printed


def _runs(paths: list[Path]) -> list[Run]:
    ordered, note = order_by_step(comparison.load_runs([str(p) for p in paths]))
    assert note is None and ordered is not None
    return ordered


def test_each_step_series_is_the_planted_values(stepped):
    points = step_figures.step_points(_runs(stepped))
    assert [p.step for p in points] == STEPS
    corpus = points[0].corpus
    column = {i: [PLANTED[s][i] for s in STEPS] for i in (0, 1, 3, 4)}
    assert step_figures.first_massive_series(points) == {corpus: (STEPS, column[0])}
    assert step_figures.peak_series(points) == {corpus: (STEPS, column[1])}
    assert step_figures.sink_rate_series(points) == {corpus: (STEPS, column[3])}
    assert step_figures.perplexity_series(points) == {corpus: (STEPS, column[4])}  # the baseline's, not cut's
    assert step_figures.massive_dims(points) == list(DIMS)
    assert step_figures.massive_dim_series(points) == {f"dim {d}": (STEPS, values) for d, values in DIMS.items()}


def _lines(figure) -> list:
    """The figure's data lines (not a guide line such as the `none` row's)."""
    return [line for line in figure.axes[0].get_lines() if not line.get_label().startswith("_")]


def _same(plotted, expected) -> bool:
    """Plotted y values equal the expected ones, a gap (NaN) where None."""
    return len(plotted) == len(expected) and all(
        math.isnan(p) if e is None else p == e for p, e in zip(plotted, expected, strict=True)
    )


def test_the_figures_plot_those_series_on_a_symlog_step_axis(stepped):
    figures, skipped = step_figures.step_figures(_runs(stepped))
    assert skipped == [] and set(figures) == {k for k in comparison.FIGURES if k.startswith("step_")}
    n_layer = 3
    (first,) = _lines(figures["step_first_massive"])
    assert list(first.get_xdata()) == STEPS
    assert list(first.get_ydata()) == [n_layer if v is None else v for v in (PLANTED[s][0] for s in STEPS)]
    ticks = figures["step_first_massive"].axes[0].get_yticklabels()
    assert [t.get_text() for t in ticks] == ["0", "1", "2", "none"]  # no massive block: the top row
    for key, i in (("step_peak", 1), ("step_sink_rate", 3), ("step_perplexity", 4)):
        (line,) = _lines(figures[key])
        assert _same(line.get_ydata(), [PLANTED[s][i] for s in STEPS]), key
    dims = _lines(figures["step_massive_dims"])
    assert [line.get_label() for line in dims] == [f"dim {d}" for d in DIMS]
    assert all(_same(line.get_ydata(), values) for line, values in zip(dims, DIMS.values(), strict=True))
    for key, figure in figures.items():
        ax = figure.axes[0]
        # steps 0 ... 143000: symlog, linear up to the first step above 0, so step 0 is on the axis
        assert ax.get_xscale() == "symlog" and ax.get_xlim()[0] <= 0 <= ax.get_xlim()[1], key
        assert ax.get_xlabel() == "training step (symlog: linear 0 to 1, log above)"
        assert ax.get_yscale() == ("log" if key in ("step_peak", "step_massive_dims", "step_perplexity") else "linear")
        assert ax.get_legend() is not None and ax.get_title().endswith(f"{MODEL} (baseline)")


def test_step_scale():
    assert step_figures.step_scale([0, 1000, 2000]) == "linear"
    assert step_figures.step_scale([1000, 143000]) == "log"
    assert step_figures.step_scale([0, 1000, 143000]) == "symlog"


def test_a_statistic_no_run_has_is_skipped_with_a_line(stepped):
    runs = _runs(stepped[:2])
    for run in runs:  # head scores off: no sink rate (an older file: no key at all)
        run.results = copy.deepcopy(run.results)
        run.results["variants"]["baseline"].pop("model_sink_rate")
    figures, skipped = step_figures.step_figures(runs)
    assert skipped == [
        "no training-step sink-rate figure: no run has a model sink rate (run with model.analyses.head_scores on)"
    ]
    assert "step_sink_rate" not in figures and len(figures) == len(STEP_FIGURES) - 1


def test_mixed_runs_keep_their_order_and_get_no_step_figures(stepped, tmp_path, template, capsys):
    final = write_run(tmp_path, template, None, {"name_or_path": MODEL}, name="pythia-160m")  # no revision
    out = tmp_path / "cmp"
    _compare(capsys, *stepped[:2], "--out", out)
    assert STEP_FIGURES <= {p.name for p in out.iterdir()}
    # --force: the earlier step figures would read as this comparison's, so they go
    printed = _compare(capsys, stepped[0], final, stepped[1], "--out", out, "--force")
    note = "no training-step figures: run pythia-160m/version_0 has no training step"
    assert [line for line in printed.splitlines() if line.startswith("no training-step")] == [
        f"{note} (revision stepN, or a stepN / checkpoint-N folder)"
    ]
    content = json.loads((out / "comparison.json").read_text())
    assert content["by_training_step"] is False
    assert [r["training_step"] for r in content["rows"]] == [1000, 1000, None, None, 0, 0]  # as given
    assert [r[1] for r in _table(printed)] == ["1000", "1000", "-", "-", "0", "0"]
    assert not {p.name for p in out.iterdir()} & STEP_FIGURES


def _run(name_or_path: str, revision: str | None = None, label: str = "", gguf_file: str | None = None) -> Run:
    model = {"name_or_path": name_or_path, "revision": revision, "gguf_file": gguf_file}
    return Run(label or f"{name_or_path}@{revision}", Path("/r") / label, {"model": model, "variants": {}})


@pytest.mark.parametrize(
    "runs, order",
    [
        ([_run(MODEL, "step2000"), _run(MODEL, "step1000")], [1, 0]),
        ([_run(MODEL, "step1000-tokens4B"), _run(MODEL, "step20-tokens0B")], [1, 0]),  # OLMo: the revision's rest
        ([_run("/c/run1/checkpoint-1500"), _run("/c/run1/checkpoint-500/")], [1, 0]),
        ([_run("/c/run1/step3000/model"), _run("/c/run1/step300/model")], [1, 0]),
        ([_run("/c/step3000/model-step3000.Q4_0.gguf"), _run("/c/step30/model-step30.Q4_0.gguf")], [1, 0]),
        ([_run("/c/run1/checkpoint-9", label="a"), _run("/c/run1/checkpoint-9", label="b")], [0, 1]),  # ties as given
    ],
)
def test_checkpoints_of_one_model_are_ordered_by_step(runs, order):
    ordered, note = order_by_step(runs)
    assert note is None and ordered == [runs[i] for i in order]


@pytest.mark.parametrize(
    "runs, note",
    [
        ([_run(MODEL, "step1"), _run("EleutherAI/pythia-410m", "step2")], "checkpoints of different models"),
        ([_run("/c/run1/checkpoint-5"), _run("/c/run2/checkpoint-10")], "(/c/run1/checkpoint-*, /c/run2/checkpoint-*)"),
        ([_run(MODEL, "step1"), _run("/c/pythia-160m/step2")], "checkpoints of different models"),
        ([_run(MODEL, "step1", gguf_file="a.Q4_0.gguf"), _run(MODEL, "step2", gguf_file="a.Q8_0.gguf")], "different"),
        ([_run(MODEL, "step1"), _run(MODEL, "main", label="main")], "run main has no training step"),
    ],
)
def test_different_models_or_a_run_without_a_step_are_not_ordered(runs, note):
    ordered, line = order_by_step(runs)
    assert ordered is None and line.startswith("no training-step figures: ") and note in line


def test_runs_without_any_step_say_nothing():
    assert order_by_step([_run("gpt2"), _run("/c/llama")]) == (None, None)


@pytest.mark.parametrize(
    "model, step",
    [
        ({"name_or_path": MODEL, "revision": "step1000"}, 1000),
        ({"name_or_path": MODEL, "revision": "step-1000"}, 1000),
        ({"name_or_path": MODEL, "revision": "step0"}, 0),
        ({"name_or_path": "allenai/OLMo-1B-hf", "revision": "step20000-tokens84B"}, 20000),
        ({"name_or_path": "/c/checkpoint-500", "revision": "step10"}, 10),  # the revision first
        ({"name_or_path": MODEL, "revision": "main"}, None),
        ({"name_or_path": MODEL, "revision": None}, None),
        ({"name_or_path": MODEL}, None),  # an older file: no revision key
        ({"name_or_path": "/ckpts/run/checkpoint-500"}, 500),
        ({"name_or_path": "/ckpts/run/checkpoint-500/"}, 500),
        ({"name_or_path": "ckpts/run/step3000/model"}, 3000),
        ({"name_or_path": "/ckpts/run/global_step3000"}, 3000),
        ({"name_or_path": "/ckpts/run/step_3000"}, 3000),
        ({"name_or_path": "C:\\ckpts\\checkpoint-20"}, 20),
        ({"name_or_path": "/ckpts/checkpoint-500/model.Q4_1.gguf"}, 500),
        ({"name_or_path": "/ckpts/model-step7.gguf"}, 7),
        ({"name_or_path": "/ckpts/step3000/run/model"}, None),  # only the last two folders
        ({"name_or_path": "/ckpts/mystep5"}, None),
        ({"name_or_path": "/ckpts/steps"}, None),
        ({"name_or_path": "toy"}, None),
        ({"name_or_path": "smollm2"}, None),
        ({"name_or_path": "/no/such/dir/checkpoint-42"}, 42),  # the path's text, no file system lookup
    ],
)
def test_training_step(model, step):
    assert training_step({"model": model, "variants": {}}) == step


@pytest.mark.parametrize(
    "args, expected",
    [
        ((MODEL, "step1000"), "pythia-160m@step1000"),
        ((MODEL, None), "pythia-160m"),
        ((MODEL, ""), "pythia-160m"),
        ((MODEL, "refs/pr/1"), "pythia-160m@refs_pr_1"),
        (
            ("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", None, "SmolLM2-135M-Instruct.Q4_1.gguf"),
            "SmolLM2-135M-Instruct.Q4_1",
        ),
        (("/models/SmolLM2-135M-Instruct.Q4_1.gguf",), "SmolLM2-135M-Instruct.Q4_1"),
        (("/models/odd name.GGUF",), "odd_name"),
        (("/models/model.gguf", "step5"), "model@step5"),
        (("repo/x-GGUF", "main", "sub/dir/x.Q8_0.gguf"), "x.Q8_0@main"),
        (("toy", None, None), "toy"),
    ],
)
def test_model_run_name_with_revision_and_gguf(args, expected):
    assert model_run_name(*args) == expected


def test_labels_say_the_revision():
    paths = [Path(f"/a/lightning_logs/pythia-160m@step{s}/version_0/results.json") for s in (0, 1000)]
    models = [{"name_or_path": MODEL, "revision": f"step{s}", "gguf_file": None} for s in (0, 1000)]
    assert comparison.run_labels(paths, models) == ["pythia-160m@step0/version_0", "pythia-160m@step1000/version_0"]
    gguf = {"name_or_path": "org/SmolLM2-GGUF", "gguf_file": "SmolLM2.Q4_1.gguf"}  # no revision key: null
    assert comparison.run_labels([paths[0], Path("/b/x/results.json")], [MODEL, gguf])[1] == "SmolLM2.Q4_1/x"


def test_checkpoints_in_two_precisions_are_two_lines(tmp_path, template, capsys):
    """The same checkpoints in float32 and bf16-mixed: one line per precision in each step
    figure (one line through both would zigzag between them), named by it, and a precision
    column in the table."""
    paths = [
        write_run(tmp_path, {**template, "precision": precision}, s, {"name_or_path": MODEL, "revision": f"step{s}"},
                  name=f"pythia-160m@step{s}-{precision}")
        for precision in ("32-true", "bf16-mixed") for s in (0, 1000)
    ]  # fmt: skip
    points = step_figures.step_points(_runs(paths))
    assert [(p.step, p.tag) for p in points] == [
        (0, "32-true"),
        (0, "bf16-mixed"),
        (1000, "32-true"),
        (1000, "bf16-mixed"),
    ]
    corpus = points[0].corpus
    expected = {f"{corpus}, {p}": ([0, 1000], [PLANTED[0][4], PLANTED[1000][4]]) for p in ("32-true", "bf16-mixed")}
    assert step_figures.perplexity_series(points) == expected
    assert list(step_figures.massive_dim_series(points))[:2] == [
        f"dim 7, {corpus}, 32-true",
        f"dim 7, {corpus}, bf16-mixed",
    ]
    figures, _ = step_figures.step_figures(_runs(paths))
    assert [line.get_label() for line in _lines(figures["step_perplexity"])] == list(expected)
    printed = _compare(capsys, *paths, "--out", tmp_path / "cmp")
    assert printed.splitlines()[0].split()[:6] == ["run", "step", "variant", "corpus", "model", "precision"]
