"""results.json, typed in one place: what a run writes (`RunResults.to_json`) and what every
reader (`read_results`, `rank-heads`, selections and edits that read an earlier run) gets.

The TypedDicts list the built-in analyses' keys; an analysis added later adds its own keys
to a variant entry (the entry is a plain dict at run time). Keys may be added, never renamed.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lit_massive.errors import InputError
from lit_massive.results.names import BASELINE, SCORES

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:  # pragma: no cover
    from typing_extensions import NotRequired, TypedDict

if TYPE_CHECKING:
    import pandas
    from torch import Tensor

RESULTS = "results.json"


class LayerRow(TypedDict):
    """One layer of the layer profile (`layers`)."""

    layer: int
    top: list[float | None]  # mean over windows of the k largest |block output|
    median: float | None
    top1_over_median: float | None
    massive_fraction: float | None  # share of windows whose top-1 is massive
    finite_sequences: int
    locator_overflow: int
    nonfinite_values: int
    nonfinite_values_exact: bool  # false: some sequence had more than massive_candidates + 1 (a lower bound)
    top1_dim: int
    top1_dim_fraction: float
    top1_position: int
    top1_position_fraction: float
    top1_token_id: int
    top1_token: str
    top1_token_fraction: float
    # outlier statistics (model.analyses.outlier_stats; null when off, absent in older files): means over windows
    kurtosis: NotRequired[float | None]  # mean_d s_d^4 / (mean_d s_d^2)^2, s_d the RMS over tokens of dim d
    top_direction_share: NotRequired[float | None]  # sigma_1^2 / sum_k sigma_k^2 of the (T, D) block output
    matrix_entropy: NotRequired[float | None]  # -sum_k p_k log p_k / log min(T, D), p_k = sigma_k^2 / sum
    outlier_left_out: NotRequired[int | None]  # windows left out of those means (not finite, or all zero)


class LocatedEntry(TypedDict):
    """One (layer, dim, position) that is massive in some window (`massive`)."""

    layer: int
    dim: int
    position: int
    token_id: int
    token: str
    value: float
    fraction: float


class ComponentEntry(TypedDict):
    """What enters a block at a massive (dim, position) and what attention and MLP add."""

    layer: int
    dim: int
    position: int
    resid_in: float
    attn: float
    mlp: float
    sequences: int


class EditedBlock(TypedDict):
    layer: int
    edited: int  # entries changed, summed over windows
    means: int | None  # mean edits: the (dim, first|rest) means this block has
    unmatched: int | None  # mean edits: massive entries with no mean for their group, left as they were


class EditRecord(TypedDict):
    layer: int | list[int] | str  # as written: one block, a list, or "all"
    layers: list[int]  # resolved
    positions: str  # all, first or rest
    to: str  # zero, mean or random
    source: str | None
    seed: int
    entries: int | None
    note: str | None
    blocks: list[EditedBlock] | None


class ZeroedWeight(TypedDict):
    layer: int
    row: int  # j: output channel of the block's MLP output projection
    col: int  # i: input channel
    weight: float  # W[j, i] before zeroing


class WeightEditRecord(TypedDict):
    to: str  # zero_weights or zero_random_weights
    weights_from: str  # given, super (this run's candidates) or random
    layers: list[int]
    weights: list[ZeroedWeight]
    layer: int | None  # zero_random_weights: the block drawn from
    count: int | None
    seed: int | None
    note: str | None


class VariantEntry(TypedDict):
    """One variant of `variants`; the keys of an analysis that is off are null."""

    pruned_heads: list[list[int]]
    edit: EditRecord | WeightEditRecord | None
    num_sequences: int
    first_massive_layer: int | None
    first_nonfinite_layer: int | None
    layers: list[LayerRow]
    head_scores: list[list[float | None]] | None  # (L, H) first-token attention
    massive_token_scores: list[list[float | None]] | None  # (L, H)
    attention_to_massive: list[float | None] | None  # (L,)
    received: list[list[float | None]] | None  # (L, P)
    perplexity: float | None
    # from the same NLL sum, per UTF-8 byte / word of the scored text; null also for windows given without text
    bits_per_byte: float | None
    byte_perplexity: float | None
    word_perplexity: float | None
    nll_sum: float | None
    scored_tokens: int | None
    scored_bytes: int | None
    scored_words: int | None
    nonfinite_tokens: int | None
    massive: list[LocatedEntry]
    components: list[ComponentEntry] | None
    components_overflow: int | None
    # per statistic, per layer % change (top1_pct ... median_pct), mean_over_layers, perplexity_pct
    change_vs_baseline: NotRequired[dict[str, Any]]
    # model.analyses.tasks: {task: {metric: value, metric_stderr: value}} as lm-eval reports them (absent in old files)
    tasks: NotRequired[dict[str, dict[str, float | None]] | None]


class TaskRecord(TypedDict):
    """One task of the run's `tasks` (model.analyses.tasks), as lm-eval reports it."""

    version: float | str | None  # the task's version
    documents: int  # documents evaluated (the first `limit` of them)
    documents_in_task: int
    output_type: str  # multiple_choice, loglikelihood, loglikelihood_rolling or generate_until
    num_fewshot: int
    higher_is_better: dict[str, bool]  # per metric


class TasksRecord(TypedDict):
    """The run's `tasks` (model.analyses.tasks): what lm-evaluation-harness evaluated every variant on."""

    lm_eval_version: str
    names: list[str]  # model.analyses.tasks.names: task, group or tag names, or task files
    limit: int | None
    batch_size: int
    num_fewshot: int | None  # null: each task's own
    bootstrap_iters: int
    processes: int  # each evaluated its share of every task's documents
    wall_s: float  # every variant's evaluation, after the pass
    tasks: dict[str, TaskRecord]  # per leaf task
    groups: dict[str, list[str]]  # per group named: its subtasks


class CorpusResults(TypedDict):
    """One corpus of `corpora` (every corpus but the default): what it evaluated and its variants."""

    data: dict[str, Any]
    variants: dict[str, VariantEntry]


class ResultsFile(TypedDict):
    """The whole of results.json. `data` and `variants` are the default corpus's (`corpus`);
    `corpora` holds the other corpora of a run over several (`data.corpora`), {} otherwise."""

    model: dict[str, Any]
    corpus: NotRequired[str | None]  # absent in older files
    data: dict[str, Any] | None
    precision: str
    world_size: int
    parallel: dict[str, Any]
    timing: dict[str, float]
    sweep: dict[str, Any] | None
    variants: dict[str, VariantEntry]
    corpora: NotRequired[dict[str, CorpusResults]]  # absent in older files
    provenance: NotRequired[dict[str, Any]]
    feature_view: NotRequired[dict[str, Any]]
    tasks: NotRequired[TasksRecord]  # with model.analyses.tasks


@dataclass
class RunResults:
    """Everything one validation pass measured, computed by the LightningModule on every
    rank; the writers (results.json, TensorBoard, figures, tables) read only this."""

    model: dict[str, Any]  # what was measured: model shape, thresholds, which analyses ran
    data: dict[str, Any] | None  # the windows (None without a data module)
    precision: str
    world_size: int
    # strategy, whether the layers are sharded, parameter and peak memory per rank (`parallel_record`)
    parallel: dict[str, Any]
    timing: dict[str, float]  # wall_s, tokens, tokens_per_s, forward_passes_per_window
    sweep: dict[str, Any] | None  # order, seed, k values and variant names of a sweep
    variants: dict[str, VariantEntry]  # baseline first
    # versions, model revision, data fingerprint, git commit, date, hardware (`run_provenance`)
    provenance: dict[str, Any] | None = None
    # top-level sections of analyses that measure after the pass (feature_view), by analysis name
    sections: dict[str, Any] = field(default_factory=dict)
    analyses: list[str] = field(default_factory=list)  # the analyses that ran, registry order
    # the default corpus's name (`data` and `variants` are its); None for windows given in memory
    corpus: str | None = None
    corpora: dict[str, CorpusResults] = field(default_factory=dict)  # every other corpus, by name

    def by_corpus(self) -> dict[str | None, dict[str, VariantEntry]]:
        """Every corpus's variant entries by corpus name, the default corpus first."""
        return {self.corpus: self.variants, **{name: c["variants"] for name, c in self.corpora.items()}}

    def to_json(self) -> ResultsFile:
        """The content of results.json."""
        out: dict[str, Any] = {
            "model": self.model,
            "corpus": self.corpus,
            "data": self.data,
            "precision": self.precision,
            "world_size": self.world_size,
            "parallel": self.parallel,
            "timing": self.timing,
            "sweep": self.sweep,
            "variants": self.variants,
            "corpora": self.corpora,
        }
        if self.provenance is not None:
            out["provenance"] = self.provenance
        for name, section in self.sections.items():
            if section is not None:
                out[name] = section.to_json() if hasattr(section, "to_json") else section
        return out

    def layer_frame(self) -> pandas.DataFrame:
        """Every per-layer figure of every variant, one row per (variant, layer): the `layers`
        row (top1.., median, top1_over_median, where the top-1 sits, the outlier statistics),
        each entry key holding one number per layer (`attention_to_massive`, `sink_rate`, ...),
        each list of one row per layer (`mlp_down`: `mlp_down_input_value`, ...) and the % change
        vs the baseline. Read from the entries, so an analysis added later brings its columns."""
        import pandas

        rows = []
        for name, entry in self.variants.items():
            n_layer = len(entry["layers"])
            numbers = [k for k, v in entry.items() if _per_layer_numbers(v, n_layer)]
            blocks = [k for k, v in entry.items() if k != "layers" and _per_layer_rows(v, n_layer)]
            change = entry.get("change_vs_baseline", {})
            for row in entry["layers"]:
                layer = row["layer"]
                flat = {"variant": name, **{k: v for k, v in row.items() if k != "top"}}
                flat.update({f"top{j + 1}": v for j, v in enumerate(row["top"])})
                flat.update({k: entry[k][layer] for k in numbers})
                for k in blocks:
                    flat.update(_flat(k, {c: v for c, v in entry[k][layer].items() if c != "layer"}))
                flat.update({k: v[layer] for k, v in change.items() if isinstance(v, list)})
                rows.append(flat)
        return pandas.DataFrame(rows)

    def head_frame(self) -> pandas.DataFrame:
        """Every per-head figure of every variant, one row per (variant, layer, head): the
        (L, H) keys `rank-heads` and selections rank by (`SCORES`): first-token (`head_score`)
        and massive-token (`massive_token_score`) attention with `model.analyses.head_scores.enabled`, the
        attention internals (`value_norm_first`, `head_output_norm`, ...) with
        `model.analyses.head_internals.enabled`; null where a variant lacks one; empty without head scores."""
        import pandas

        keys = [k for k in dict.fromkeys(k for e in self.variants.values() for k in e) if k in _HEAD_KEYS]
        keys = [k for k in keys if any(e.get(k) is not None for e in self.variants.values())]
        columns = ["variant", "layer", "head", *(_HEAD_COLUMN.get(k, k) for k in keys or _HEAD_COLUMN)]
        rows = []
        for name, entry in self.variants.items():
            grid = next((entry[k] for k in keys if entry.get(k) is not None), None)
            for layer, head in ((layer, head) for layer, row in enumerate(grid or []) for head in range(len(row))):
                values = [None if entry.get(k) is None else entry[k][layer][head] for k in keys]
                rows.append([name, layer, head, *values])
        return pandas.DataFrame(rows, columns=columns)


# the (L, H) keys of a variant entry, and the head frame's names of the two head scores (as it always had them)
_HEAD_KEYS = frozenset(SCORES.values())
_HEAD_COLUMN = {SCORES["first_token"]: "head_score", SCORES["massive_tokens"]: "massive_token_score"}


def _per_layer_numbers(value: Any, n_layer: int) -> bool:
    """Whether an entry's value holds one number (or null) per layer."""
    return isinstance(value, list) and len(value) == n_layer and all(_is_number(v, nullable=True) for v in value)


def _per_layer_rows(value: Any, n_layer: int) -> bool:
    """Whether an entry's value is one row per layer, in layer order (`mlp_down`), not a list
    of located entries (several per layer, or none for some)."""
    return (
        isinstance(value, list)
        and len(value) == n_layer
        and all(isinstance(row, dict) and row.get("layer") == i for i, row in enumerate(value))
    )


def _flat(prefix: str, row: dict[str, Any]) -> dict[str, Any]:
    """A row's values as `prefix_key` columns, nested rows as `prefix_key_inner`."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        out.update(_flat(f"{prefix}_{key}", value) if isinstance(value, dict) else {f"{prefix}_{key}": value})
    return out


def read_results(path: str | Path, what: str = "results file") -> ResultsFile:
    """A results.json, or a one-line error saying why it cannot be read: missing, empty,
    truncated or otherwise not JSON, or JSON that is not a lit_massive results.json (no
    variants, or a variant of any corpus whose head scores or located entries have the wrong shape)."""
    file = Path(path).expanduser()
    if file.is_dir():
        if not (file / RESULTS).is_file():
            raise InputError(_no_results_line(what, str(path), file))
        file = file / RESULTS
    if not file.is_file():
        raise InputError(f"{what} {str(path)!r} does not exist; give a run directory or its {RESULTS}")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{what} {str(file)!r} is not text (not UTF-8); give a lit_massive {RESULTS}") from err
    except OSError as err:
        raise InputError(f"{what} {str(file)!r} cannot be read ({err.strerror or err})") from err
    if not text.strip():
        raise InputError(f"{what} {str(file)!r} is empty; was its run interrupted? Run it again")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        where = err if not isinstance(err, json.JSONDecodeError) else f"line {err.lineno} column {err.colno}: {err.msg}"
        raise InputError(
            f"{what} {str(file)!r} is not valid JSON ({where}): truncated, or not a {RESULTS}; was its run interrupted?"
        ) from err
    if not isinstance(data, dict) or not isinstance(data.get("variants"), dict) or not data["variants"]:
        raise InputError(f"{what} {str(file)!r} has no 'variants'; give the {RESULTS} of a lit_massive run")
    corpora = data.get("corpora") or {}
    if not isinstance(corpora, dict) or not all(
        isinstance(c, dict) and isinstance(c.get("variants"), dict) and c["variants"] for c in corpora.values()
    ):
        raise InputError(f"{what} {str(file)!r} has a malformed 'corpora'; give the {RESULTS} of a lit_massive run")
    variants = {**data["variants"], **{f"{c}/{n}": e for c, v in corpora.items() for n, e in v["variants"].items()}}
    for name, entry in variants.items():
        problem = _entry_problem(entry)
        if problem is not None:
            raise InputError(
                f"{what} {str(file)!r}: variant {name!r} {problem}; give the {RESULTS} of a lit_massive run"
            )
    return data


_RUN_FILES = ("config.yaml", "hparams.yaml")  # what a CLI run writes into its directory before results.json


def _no_results_line(what: str, given: str, directory: Path) -> str:
    """Why a directory without results.json cannot be read: a run's directory (it has the
    run's config) means the run did not finish; another folder is not a run directory."""
    if any((directory / name).is_file() for name in _RUN_FILES):
        return (
            f"{what} {given!r} has no {RESULTS}: the run did not finish (it failed, was stopped, or is still "
            f"running); run it again, or give a finished run directory or its {RESULTS}"
        )
    return (
        f"{what} {given!r} has no {RESULTS} and is not a run directory; "
        f"give lightning_logs/<model>/version_N or its {RESULTS}"
    )


def _is_number(value: Any, nullable: bool = False) -> bool:
    return (value is None and nullable) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _entry_problem(entry: Any) -> str | None:
    """What is wrong with a variant entry of results.json, in the parts other runs read
    (head scores for selections and rank-heads, located entries for mean edits); None if
    nothing."""
    if not isinstance(entry, dict):
        return "is not an object"
    for key in SCORES.values():
        rows = entry.get(key)
        if rows is None:
            continue
        if not (
            isinstance(rows, list)
            and rows
            and all(isinstance(row, list) and len(row) == len(rows[0]) for row in rows)
            and all(_is_number(v, nullable=True) for row in rows for v in row)
        ):
            return f"has a malformed {key!r} (not layers x heads numbers)"
    massive = entry.get("massive")
    if massive is not None and not (
        isinstance(massive, list)
        and all(
            isinstance(e, dict)
            and all(isinstance(e.get(k), int) for k in ("layer", "dim", "position"))
            and _is_number(e.get("value"))
            for e in massive
        )
    ):
        return "has a malformed 'massive' (not a list of located entries)"
    return None


def scores_tensor(rows: list[list[float | None]]) -> Tensor:
    """(L, H) head scores from results.json rows, null as NaN."""
    import torch  # here, not at the top: reading results (rank-heads) needs no torch

    return torch.tensor([[float("nan") if v is None else v for v in row] for row in rows], dtype=torch.float64)


def load_score_rows(path: str, variant: str = BASELINE, by: str = "first_token") -> list[list[float | None]]:
    """Head scores (L, H) of `variant` from a results.json as rows (null: unmeasured):
    first-token (`head_scores`) or massive-token (`massive_token_scores`) ones."""
    data = read_results(path, "scores file")
    key = SCORES[by]
    scores = data["variants"].get(variant, {}).get(key)
    if scores is None:
        raise InputError(f"{path}: variant {variant!r} has no {key}; run it with model.analyses.head_scores on")
    return scores


def load_scores(path: str, variant: str = BASELINE, by: str = "first_token") -> Tensor:
    """`load_score_rows` as an (L, H) float64 tensor, null as NaN."""
    return scores_tensor(load_score_rows(path, variant, by))


def load_massive(path: str, variant: str = BASELINE) -> list[LocatedEntry]:
    """The located massive activations of `variant` from a results.json."""
    found = read_results(path, "set_massive.from").get("variants", {}).get(variant, {}).get("massive")
    if found is None:
        raise InputError(f"{path}: variant {variant!r} has no 'massive' locator entries")
    return found
