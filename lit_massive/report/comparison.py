"""Several runs side by side (`compare`): one row per run x variant x corpus, read straight from
each run's results.json, as a terminal table, markdown and JSON, and figures that overlay the
runs (top-1 and median against depth, attention to massive tokens, head-score distributions).

Checkpoints of one model (revision `stepN`, or `stepN` / `checkpoint-N` folders) come in
training-step order with a step column (`order_by_step`); report/step_figures.py draws their
statistics against the step.

Plain Python and matplotlib only, no torch: `compare` answers in seconds
(tests/test_startup.py). `model_run_name` also names a run's TensorBoard directory
(cli/validate.py), so a run directory and its label here say the same model (and revision).
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import matplotlib
from matplotlib.figure import Figure

from lit_massive.errors import InputError
from lit_massive.figures.comparison_figures import attention_figure, depth_figure, head_scores_figure, measured_scores
from lit_massive.results.markdown import cell, markdown_table
from lit_massive.results.schema import RESULTS, ResultsFile, read_results
from lit_massive.tasks.scores import change_key, main_metric, score_cell

BASELINE = "baseline"
NAN = float("nan")
DPI = 120  # as report/publisher.py
# bytes per element of `model.parameter_dtype`, to count parameters from `parallel.parameter_bytes_full`
_DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}
# what `compare` writes into its directory (figures: those the runs have data for)
MARKDOWN, JSON = "comparison.md", "comparison.json"
FIGURES = {
    "top1_median": "top1_median.png",
    "attention_to_massive": "attention_to_massive.png",
    "head_scores": "head_scores.png",
    # checkpoints of one model (`order_by_step`): each statistic against the training step (report/step_figures.py)
    "step_first_massive": "step_first_massive_layer.png",
    "step_peak": "step_peak_top1_over_median.png",
    "step_massive_dims": "step_massive_dims.png",
    "step_sink_rate": "step_model_sink_rate.png",
    "step_perplexity": "step_perplexity.png",
}
WRITTEN = (MARKDOWN, JSON, *FIGURES.values())
# beside a results.json whose run was interrupted while writing its figures (report/callback.py's
# INTERRUPTED; not imported from there, which imports lightning): results.json is complete
INTERRUPTED = "INTERRUPTED"
# how a run computed, which two runs of one model may differ in -> the column that shows it:
# results.json's `precision` (32-true, bf16-mixed, ...), `model.dtype` (asked) and `model.parameter_dtype` (held)
NUMERICS = {"precision": "precision", "dtype": "dtype", "parameter_dtype": "parameter dtype"}
# a horizontal box plot: `orientation` from matplotlib 3.10 on (`vert` is deprecated there), `vert` before
_HORIZONTAL = {"orientation": "horizontal"} if matplotlib.__version_info__ >= (3, 10) else {"vert": False}


def _safe(name: str) -> str:
    """A name as a file name: runs of other characters as `_`, never a hidden file."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).lstrip(".")


def _gguf_stem(name: str) -> str | None:
    """The file name of a `.gguf` path without `.gguf` (a quantization suffix such as `.Q4_1`
    stays: it tells two files of one model apart); None for another path."""
    last = PurePosixPath(name.replace("\\", "/").rstrip("/")).name
    return last[: -len(".gguf")] if last.lower().endswith(".gguf") else None


def model_run_name(model_name_or_path: str, revision: str | None = None, gguf_file: str | None = None) -> str:
    """A short, filesystem-safe name of a model for its run directory and labels: the last
    part of a hub id (`meta-llama/Llama-2-7b-hf` -> `Llama-2-7b-hf`) or of a local directory
    (a hub cache snapshot: its repository's name), `toy` as it is; a GGUF model by its file
    (`gguf_file`, or a path to a `.gguf` file) without `.gguf`, since a repository holds
    several quantizations; then `@revision` (`pythia-160m@step1000`), so checkpoints of one
    model get run directories of their own."""
    gguf = _gguf_stem(gguf_file) if gguf_file else _gguf_stem(model_name_or_path)
    path = Path(model_name_or_path).expanduser()
    if gguf is not None:
        name = gguf
    elif path.is_dir():
        path = path.resolve()
        if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
            path = Path(path.parent.parent.name.split("--")[-1])
        name = path.name
    else:
        name = PurePosixPath(model_name_or_path.replace("\\", "/").rstrip("/")).name
    name = _safe(name) or "model"
    at = _safe(revision or "")
    return f"{name}@{at}" if at else name


@dataclass
class Run:
    """One run to compare: its label (unique among the runs), results.json path and content,
    and whether it was interrupted while writing its figures (an INTERRUPTED file beside)."""

    label: str
    path: Path
    results: ResultsFile
    interrupted: bool = False


def _results_path(given: str) -> Path:
    path = Path(given).expanduser()
    return path / RESULTS if path.is_dir() else path


def _check_layers(path: Path, results: dict) -> None:
    """What `compare` reads beyond what `read_results` checks: the model and every variant's
    layer profile, on every corpus; a one-line error naming the file otherwise."""
    model = results.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name_or_path"), str):
        raise InputError(f"run {str(path)!r} has no 'model' section; give the {RESULTS} of a lit_massive run")
    for name, entry in (item for _, _, variants in corpora(results) for item in variants.items()):
        layers = entry.get("layers")
        if not isinstance(layers, list) or not layers or not all(isinstance(r, dict) and "top" in r for r in layers):
            raise InputError(
                f"run {str(path)!r}: variant {name!r} has no layer profile ('layers'); "
                f"give the {RESULTS} of a lit_massive run"
            )


def run_labels(paths: list[Path], models: list[str | dict[str, Any]]) -> list[str]:
    """`model/run-dir-name` (`gpt2/version_0`, `pythia-160m@step1000/version_0`, as
    TensorBoard names the run; a model as its name_or_path or results.json's `model`
    section, whose revision and GGUF file the name then says); where two runs would share
    one, their run directories' paths below the runs' common folder instead."""
    dirs = [p.parent.resolve() for p in paths]
    names = [_run_name(m) for m in models]
    labels = [f"{n}/{d.name}" for n, d in zip(names, dirs, strict=True)]
    common = Path(os.path.commonpath([str(d) for d in dirs]))
    shared = {label for label in labels if labels.count(label) > 1}
    for i, label in enumerate(labels):
        if label in shared:
            rel = dirs[i].relative_to(common).as_posix() if dirs[i] != common else dirs[i].as_posix()
            labels[i] = rel if names[i] in rel.split("/") else f"{names[i]}: {rel}"
    if len(set(labels)) < len(labels):  # a contrived tree: the full paths, unique as the runs are
        labels = [d.as_posix() for d in dirs]
    return labels


def _run_name(model: str | dict[str, Any]) -> str:
    """`model_run_name` of a name_or_path, or of a `model` section (with its revision and GGUF file)."""
    if isinstance(model, str):
        return model_run_name(model)
    return model_run_name(model["name_or_path"], _text(model.get("revision")), _text(model.get("gguf_file")))


def _text(value: Any) -> str | None:
    """A string of results.json's `model` section; None for null, a missing key or another type."""
    return value if isinstance(value, str) else None


def load_runs(given: list[str]) -> list[Run]:
    """The runs (run directories or results.json files) `compare` reads, in the order given,
    with unique labels; a one-line error for fewer than two, a path given twice, a missing or
    unreadable file, or a file that is not a lit_massive results.json."""
    if len(given) < 2:
        shown = f": {given[0]}" if given else ""
        raise InputError(
            f"compare needs two or more runs (run directories or {RESULTS} files); got {len(given)}{shown}"
        )
    paths, loaded = [], []
    for text in given:
        results = read_results(text, "run")
        path = _results_path(text).resolve()
        if path in paths:
            raise InputError(f"run {text!r} is given twice ({path}); give each run once")
        _check_layers(path, results)
        paths.append(path)
        loaded.append(results)
    labels = run_labels(paths, [r["model"] for r in loaded])
    return [
        Run(label, path, results, (path.parent / INTERRUPTED).is_file())
        for label, path, results in zip(labels, paths, loaded, strict=True)
    ]


# ---------------------------------------------------------------------------------------
# training steps

# `step1000`, `step-1000`, `global_step1000`, `checkpoint-500` (HF Trainer), not inside a word (`mystep5`)
_STEP = re.compile(r"(?<![A-Za-z0-9])(?:step[-_]?|checkpoint-)(\d+)(?!\d)", re.IGNORECASE)
NO_STEP = "revision stepN, or a stepN / checkpoint-N folder"


def _model_of(results: ResultsFile) -> dict[str, Any]:
    return results.get("model") or {}


def _step_and_model(results: ResultsFile) -> tuple[int, str] | None:
    """(training step, the model it is a checkpoint of) from the revision (`step1000`: the
    model is `name_or_path`, whatever else the revision says, as OLMo's `step1000-tokens4B`),
    else from the path's last or next-to-last folder (`.../checkpoint-500`,
    `.../step3000/model`: the model is the path with that step as `*`). Plain string parsing
    of what results.json says, so a run reads the same on any machine."""
    model = _model_of(results)
    name = posixpath.normpath(str(model.get("name_or_path") or "").replace("\\", "/"))
    revision, gguf = _text(model.get("revision")), _text(model.get("gguf_file"))
    suffix = f" [{gguf}]" if gguf else ""
    found = _STEP.search(revision) if revision else None
    if found:
        return int(found[1]), name + suffix
    parts = name.split("/")
    for part in parts[-1:-3:-1]:
        found = _STEP.search(part)
        if found:
            step = int(found[1])
            return step, _starred(name, step) + (f"@{revision}" if revision else "") + suffix
    return None


def _starred(path: str, step: int) -> str:
    """`path` with each mention of `step` as `*` (`/ckpts/step3000/model-step3000.gguf` ->
    `/ckpts/step*/model-step*.gguf`): the same for every checkpoint of one training run."""

    def star(found: re.Match) -> str:
        return found[0][: found.start(1) - found.start()] + "*" if int(found[1]) == step else found[0]

    return _STEP.sub(star, path)


def training_step(results: ResultsFile) -> int | None:
    """The training step a run's checkpoint is from: `model.revision` (`step1000`), else the
    last folder of `model.name_or_path` (`step3000`, `checkpoint-500`), else the one above
    it (`.../checkpoint-500/model.gguf`); None when none says one."""
    found = _step_and_model(results)
    return None if found is None else found[0]


def order_by_step(runs: list[Run]) -> tuple[list[Run] | None, str | None]:
    """The runs in training-step order (ties as given) when they are checkpoints of one model:
    each has a step and all name the same model without it (`step_model`); else None and the
    line that says why there are no step figures (None where no run has a step)."""
    found = [_step_and_model(r.results) for r in runs]
    if all(f is None for f in found):
        return None, None
    missing = next((r.label for r, f in zip(runs, found, strict=True) if f is None), None)
    if missing is not None:
        return None, f"no training-step figures: run {missing} has no training step ({NO_STEP})"
    models = list(dict.fromkeys(model for _, model in found))
    if len(models) > 1:
        return None, f"no training-step figures: the runs are checkpoints of different models ({', '.join(models)})"
    steps = {r.label: f[0] for r, f in zip(runs, found, strict=True)}
    return sorted(runs, key=lambda r: steps[r.label]), None


def step_model(runs: list[Run]) -> str:
    """The model runs in step order are checkpoints of (`EleutherAI/pythia-160m`,
    `/ckpts/run1/checkpoint-*`)."""
    found = _step_and_model(runs[0].results)
    return "" if found is None else found[1]


# ---------------------------------------------------------------------------------------
# rows


def corpus_name(data: dict[str, Any] | None) -> str:
    """What a run evaluated, for the corpus column: the dataset (config, split) or the data
    files' names, and its windows (`20 x 128` tokens)."""
    if data is None:
        return "given windows"
    files = data.get("data_files")
    if files:
        if isinstance(files, dict):
            files = [f for value in files.values() for f in (value if isinstance(value, list) else [value])]
        names = [Path(str(f)).name for f in (files if isinstance(files, list) else [files])]
        name = ", ".join(names)
    else:
        name = ":".join(str(part) for part in (data.get("dataset"), data.get("config_name"), data.get("split")) if part)
    windows, seq_len = data.get("num_windows"), data.get("seq_len")
    shape = f" ({windows} x {seq_len})" if windows is not None and seq_len is not None else ""
    return (name or "unknown") + shape


def corpora(results: ResultsFile) -> Iterator[tuple[str, dict[str, Any] | None, dict[str, dict]]]:
    """(corpus name, its `data` record, its variants) for each corpus a run evaluated: the
    default corpus (`data`, `variants`), then each of `corpora` (a run over several); every
    row, table and figure follows. A run over several names each corpus as its config did
    (`c4: allenai/c4:en:validation (10 x 1024)`)."""
    others = results.get("corpora") or {}
    every = [(results.get("corpus"), results.get("data"), results["variants"])]
    every += [(name, corpus["data"], corpus["variants"]) for name, corpus in others.items()]
    for name, data, variants in every:
        yield (f"{name}: {corpus_name(data)}" if others else corpus_name(data)), data, variants


def parameter_count(results: ResultsFile) -> int | None:
    """Parameters from what the run recorded: `parallel.parameter_bytes_full` (every
    parameter's bytes, tied weights once) over the bytes of `model.parameter_dtype`; exact
    when every parameter has that dtype. None when either is missing."""
    full = (results.get("parallel") or {}).get("parameter_bytes_full")
    size = _DTYPE_BYTES.get(str(results["model"].get("parameter_dtype")))
    return full // size if isinstance(full, int) and size else None


def _peak(layers: list[dict]) -> tuple[float, int] | None:
    """The largest top-1 / median over blocks and its block (as the run's own summary)."""
    found = [(r["top1_over_median"], r["layer"]) for r in layers if r.get("top1_over_median") is not None]
    return max(found, default=None)


def tokenizer_of(results: ResultsFile) -> str:
    """The tokenizer a run used, as results.json names it (`data.tokenizer`: a name or a
    path; the model's when not recorded)."""
    data = results.get("data") or {}
    return str(data.get("tokenizer") or results["model"]["name_or_path"])


def numerics(results: ResultsFile) -> dict[str, str | None]:
    """How a run computed (NUMERICS keys): its precision and the model's dtypes, as results.json has them."""
    model = _model_of(results)
    return {
        "precision": _text(results.get("precision")),
        "dtype": _text(model.get("dtype")),
        "parameter_dtype": _text(model.get("parameter_dtype")),
    }


def numerics_shown(records: list[dict[str, Any]]) -> list[str]:
    """The NUMERICS keys whose values differ between `records` (rows, or `numerics` of each
    run): what tells two runs of one model apart; the parameter dtype not where it is the
    dtype asked for in every record (it would say the same twice)."""
    keys = [key for key in NUMERICS if len({r.get(key) for r in records}) > 1]
    if {"dtype", "parameter_dtype"} <= set(keys) and all(r.get("dtype") == r.get("parameter_dtype") for r in records):
        keys.remove("parameter_dtype")
    return keys


def numerics_tag(record: dict[str, Any], keys: list[str]) -> str:
    """`keys` of a record as a label's suffix: `bf16-mixed, dtype bfloat16` ('' for no keys)."""
    parts = {"precision": "{}", "dtype": "dtype {}", "parameter_dtype": "parameters {}"}
    return ", ".join(parts[key].format(record.get(key) or "-") for key in keys)


def comparison_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per run x corpus x variant, every number as the run's results.json has it."""
    rows = []
    for run in runs:
        model, results, step = run.results["model"], run.results, training_step(run.results)
        for corpus, _data, variants in corpora(results):
            for variant, entry in variants.items():
                layers = entry["layers"]
                peak = _peak(layers)
                at = next((r for r in layers if peak is not None and r["layer"] == peak[1]), None)
                change = entry.get("change_vs_baseline") or {}
                rows.append(
                    {
                        "run": run.label,
                        "path": str(run.path),
                        "model": model["name_or_path"],
                        "revision": _text(model.get("revision")),
                        "gguf_file": _text(model.get("gguf_file")),
                        "training_step": step,
                        "family": model.get("model_type"),
                        "parameters": parameter_count(results),
                        "n_layer": model.get("n_layer", len(layers)),
                        "n_embd": model.get("n_embd"),
                        "vocab_size": model.get("vocab_size"),
                        "tokenizer": tokenizer_of(results),
                        **numerics(results),
                        "interrupted": run.interrupted,
                        "variant": variant,
                        "corpus": corpus,
                        "first_massive_layer": entry.get("first_massive_layer"),
                        "peak_top1_over_median": None if peak is None else peak[0],
                        "peak_layer": None if peak is None else peak[1],
                        "top1_dim": None if at is None else at.get("top1_dim"),
                        "top1_token": None if at is None else at.get("top1_token"),
                        "perplexity": entry.get("perplexity"),
                        "bits_per_byte": entry.get("bits_per_byte"),
                        "word_perplexity": entry.get("word_perplexity"),
                        "top1_pct": (change.get("mean_over_layers") or {}).get("top1_pct"),
                        "perplexity_pct": change.get("perplexity_pct"),
                        # model.analyses.tasks: {task: {metric: value, ...}} and the change vs the baseline
                        "tasks": entry.get("tasks"),
                        "tasks_change": change.get("tasks"),
                    }
                )
    return rows


def _count(n: int) -> str:
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _shape(row: dict[str, Any]) -> str:
    blocks, width = row["n_layer"], row["n_embd"]
    return f"{blocks} x {width}" if width is not None else f"{blocks} layers"


def _model_shown(model: str) -> str:
    """A local checkpoint by its directory name (the full path is in comparison.json)."""
    return Path(model).name if Path(model).expanduser().is_dir() else model


COLUMNS = (
    "run", "variant", "corpus", "model", "family", "parameters (layers x width)", "first massive",
    "peak top-1/median (layer)", "top-1 dim, token", "perplexity", "bits/byte", "word ppl", "top-1 %", "perplexity %",
)  # fmt: skip


def with_step(rows: list[dict[str, Any]]) -> bool:
    """Whether the table has a step column: some run is from a known training step."""
    return any(row["training_step"] is not None for row in rows)


_AFTER_MODEL = COLUMNS.index("model") + 1  # where the NUMERICS columns go, when the runs differ in them


def with_tasks(rows: list[dict[str, Any]]) -> bool:
    """Whether the table has a tasks column: some run evaluated lm-eval tasks (`model.analyses.tasks`)."""
    return any(row.get("tasks") for row in rows)


def tasks_cell(row: dict[str, Any]) -> str:
    """Each task's main score (`acc` where it has one) and, for a variant, its change vs the baseline."""
    change, cells = row.get("tasks_change"), []
    for task, scores in (row.get("tasks") or {}).items():
        metric = main_metric(scores)
        if metric is not None:
            moved = (change or {}).get(task, {}).get(change_key(metric))
            cells.append(f"{task} {metric} {score_cell(metric, scores[metric], moved, change is not None)}")
    return "; ".join(cells) or "-"


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """The table's head: COLUMNS, with `step` after `run` where a run has one, after `model` a
    column for each of precision and dtype that differs between the rows, and `tasks` last
    where a run evaluated tasks."""
    head = list(COLUMNS)
    head[_AFTER_MODEL:_AFTER_MODEL] = [NUMERICS[key] for key in numerics_shown(rows)]
    head += ["tasks"] if with_tasks(rows) else []
    return [head[0], "step", *head[1:]] if with_step(rows) else head


def table_cells(row: dict[str, Any], step: bool, shown: list[str] | None = None, tasks: bool = False) -> list[str]:
    """A row's cells in `columns` order (`step`: with the step column; `shown`: the NUMERICS
    keys with a column; `tasks`: with the tasks column)."""
    cells = row_cells(row) + ([tasks_cell(row)] if tasks else [])
    cells[_AFTER_MODEL:_AFTER_MODEL] = [row.get(key) or "-" for key in shown or []]
    return [cells[0], "-" if row["training_step"] is None else str(row["training_step"]), *cells[1:]] if step else cells


def run_cell(row: dict[str, Any]) -> str:
    """The run's label, marked where the run was interrupted (its notes line says what that means)."""
    return f"{row['run']} (interrupted)" if row.get("interrupted") else row["run"]


def row_cells(row: dict[str, Any]) -> list[str]:
    """A row's table cells, in COLUMNS order."""
    params = "-" if row["parameters"] is None else _count(row["parameters"])
    peak = row["peak_top1_over_median"]
    token = row["top1_token"]
    where = "-" if row["top1_dim"] is None else f"{row['top1_dim']}" + ("" if token is None else f" {token!r}")
    base = row["variant"] == BASELINE
    return [
        run_cell(row),
        row["variant"],
        row["corpus"],
        _model_shown(row["model"]),
        row["family"] or "-",
        f"{params} ({_shape(row)})",
        "-" if row["first_massive_layer"] is None else str(row["first_massive_layer"]),
        "-" if peak is None else f"{peak:.1f} ({row['peak_layer']})",
        where,
        cell(row["perplexity"], ".4f"),
        cell(row["bits_per_byte"], ".4f"),
        cell(row["word_perplexity"], ".4f"),
        "-" if base else cell(row["top1_pct"], "+.2f"),
        "-" if base else cell(row["perplexity_pct"], "+.2f"),
    ]


def tokenizers_differ(runs: list[Run]) -> bool:
    """Whether the runs' tokenizers may differ: recorded under different names, or with
    different vocabulary sizes."""
    keys = {(tokenizer_of(r.results), r.results["model"].get("vocab_size")) for r in runs}
    return len(keys) > 1


def notes(runs: list[Run], rows: list[dict[str, Any]]) -> list[str]:
    """The lines under the table: what the columns mean and what compares across which runs."""
    lines = [
        "%: change vs the run's own baseline (top-1: mean over layers); layers are 0-based",
        "parameters: parallel.parameter_bytes_full / bytes per model.parameter_dtype ('-': not recorded)",
    ]
    if tokenizers_differ(runs):
        groups: dict[str, list[str]] = {}
        for r in runs:
            key = f"{tokenizer_of(r.results)} (vocab {r.results['model'].get('vocab_size')})"
            groups.setdefault(key, []).append(r.label)
        lines.append(
            "tokenizers differ: token perplexity compares only between runs of the same tokenizer; "
            "across tokenizers only bits per byte (and word perplexity) compare"
        )
        lines += [f"  tokenizer {key}: {', '.join(labels)}" for key, labels in groups.items()]
    if with_tasks(rows):
        lines.append("tasks: lm-eval scores in percent (a perplexity as it is); pts: change vs the run's own baseline")
    if len({row["corpus"] for row in rows}) > 1:
        lines.append("corpora differ: numbers compare only between rows of the same corpus (and window length)")
    shown = numerics_shown(rows)
    if shown:
        named = " and ".join(NUMERICS[key] for key in shown)
        lines.append(f"runs differ in {named}: each run's is in the table and in the figure labels")
    lines += [interrupted_line(r.label) for r in runs if r.interrupted]
    return lines


def interrupted_line(label: str) -> str:
    """The note under the table for a run interrupted while writing its figures."""
    return (
        f"{label} (interrupted): stopped while writing its figures (an {INTERRUPTED} file beside its {RESULTS}); "
        f"the {RESULTS} this comparison reads is complete, its figures and TensorBoard data may not be"
    )


def terminal_table(rows: list[dict[str, Any]], lines: list[str]) -> str:
    """The table as aligned columns for the terminal, then the notes."""
    step, shown, tasks = with_step(rows), numerics_shown(rows), with_tasks(rows)
    table = [columns(rows), *(table_cells(r, step, shown, tasks) for r in rows)]
    widths = [max(len(r[c]) for r in table) for c in range(len(table[0]))]
    text = ["  ".join(t.ljust(w) for t, w in zip(r, widths, strict=True)).rstrip() for r in table]
    return "\n".join([text[0], "  ".join("-" * w for w in widths), *text[1:], *lines])


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def comparison_markdown(rows: list[dict[str, Any]], lines: list[str], figures: list[str]) -> str:
    """comparison.md: the table, the notes, the figures."""
    step, shown, tasks = with_step(rows), numerics_shown(rows), with_tasks(rows)
    table = markdown_table(columns(rows), [[_md(c) for c in table_cells(r, step, shown, tasks)] for r in rows])
    runs = "\n".join(f"- `{label}`: {path}" for label, path in dict.fromkeys((r["run"], r["path"]) for r in rows))
    bullets = [f"  - {line.strip()}" if line.startswith("  ") else f"- {line}" for line in lines]
    parts = ["# Comparison of runs", "", table, "", *bullets, "", "Runs:", "", runs]
    if figures:
        parts += ["", *(f"![{Path(f).stem}]({f})" for f in figures)]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------
# figures


def _series_label(row: dict[str, Any], several_corpora: bool) -> str:
    label = row["run"] if row["variant"] == BASELINE else f"{row['run']} [{row['variant']}]"
    return f"{label}, {row['corpus']}" if several_corpora else label


def run_tags(runs: list[Run]) -> list[str]:
    """Per run, what tells it apart from the others in precision and dtype (`numerics_tag`;
    '' for every run where they all computed alike)."""
    records = [numerics(r.results) for r in runs]
    shown = numerics_shown(records)
    return [numerics_tag(record, shown) for record in records]


def series(runs: list[Run]) -> list[tuple[str, dict]]:
    """(label, variant entry) per run x corpus x variant, in the table's order; a run's
    precision and dtype in its labels where the runs differ in them."""
    several = len({c for r in runs for c, _, _ in corpora(r.results)}) > 1
    out = []
    for run, tag in zip(runs, run_tags(runs), strict=True):
        name = f"{run.label} ({tag})" if tag else run.label
        for corpus, _data, variants in corpora(run.results):
            for variant, entry in variants.items():
                label = _series_label({"run": name, "variant": variant, "corpus": corpus}, several)
                out.append((label, entry))
    return out


def comparison_figures(runs: list[Run], relative: bool = False) -> tuple[dict[str, Figure], list[str]]:
    """The figures the runs have data for, by FIGURES key, and a line for each one skipped."""
    shown = series(runs)
    figures, skipped = {"top1_median": depth_figure(shown, relative)}, []
    with_attention = [(label, e) for label, e in shown if e.get("attention_to_massive") is not None]
    if with_attention:
        figures["attention_to_massive"] = attention_figure(with_attention, relative)
    else:
        skipped.append("no attention-to-massive figure: no run has head scores (run with model.analyses.head_scores)")
    with_scores = [(label, e) for label, e in shown if measured_scores(e.get("head_scores"))]
    if with_scores:
        figures["head_scores"] = head_scores_figure(with_scores)
    else:
        skipped.append("no head-score figure: no run has head scores (run with model.analyses.head_scores)")
    return figures, skipped
