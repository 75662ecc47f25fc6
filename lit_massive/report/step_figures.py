"""`compare` over checkpoints of one model: each statistic against the training step (the
runs as `order_by_step` ordered them), so one sees when massive activations and attention
sinks emerge during pre-training. Each point is a run's baseline on its default corpus.

The series builders (`*_series`: line label -> (steps, values), values as results.json has
them) are apart from the drawing, so what a figure plots can be checked against the runs.
Plain matplotlib, no torch (tests/test_startup.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator

from lit_massive.figures import style
from lit_massive.report.comparison import (
    BASELINE,
    Run,
    _peak,
    corpora,
    run_tags,
    step_model,
    training_step,
)

MASSIVE_DIMS = 4  # the dims drawn in the massive-dims figure: those with the largest values
SPAN = 100  # steps spanning this factor or more get a log (symlog with step 0) x axis

Series = dict[str, tuple[list[int], list[Any]]]  # line label -> (steps, values)


@dataclass
class StepPoint:
    """One run as a point of the step figures: its step and the entry drawn (the baseline on
    the run's default corpus); `tag`: its precision and dtype where the runs differ in them."""

    step: int
    corpus: str
    entry: dict[str, Any]
    n_layer: int
    tag: str = ""

    @property
    def line(self) -> str:
        """The line it is a point of: its corpus, and its precision and dtype where runs differ
        (a bfloat16 and a float32 run of one checkpoint are two lines, not a zigzag)."""
        return f"{self.corpus}, {self.tag}" if self.tag else self.corpus


def step_points(runs: list[Run]) -> list[StepPoint]:
    """The runs (in step order, each with a step) as points: the baseline of the default
    corpus (the first variant, in a file without one)."""
    points = []
    for run, tag in zip(runs, run_tags(runs), strict=True):
        corpus, _data, variants = next(corpora(run.results))
        entry = variants.get(BASELINE) or next(iter(variants.values()))
        n_layer = run.results["model"].get("n_layer") or len(entry["layers"])
        points.append(StepPoint(training_step(run.results), corpus, entry, n_layer, tag))
    return points


def _several_lines(points: list[StepPoint]) -> bool:
    return len({p.line for p in points}) > 1


def _by_corpus(points: list[StepPoint], value: Callable[[StepPoint], Any]) -> Series:
    """One line per default corpus and precision (runs evaluated on different corpora, or
    computed in different precisions, do not share a line)."""
    out: Series = {}
    for p in points:
        steps, values = out.setdefault(p.line, ([], []))
        steps.append(p.step)
        values.append(value(p))
    return out


def first_massive_series(points: list[StepPoint]) -> Series:
    """The first block with a massive activation (None: no block has one)."""
    return _by_corpus(points, lambda p: p.entry.get("first_massive_layer"))


def peak_series(points: list[StepPoint]) -> Series:
    """The largest top-1 / median over blocks (as the table's peak column)."""

    def peak(p: StepPoint) -> float | None:
        found = _peak(p.entry["layers"])
        return None if found is None else found[0]

    return _by_corpus(points, peak)


def sink_rate_series(points: list[StepPoint]) -> Series:
    """The model sink rate (share of (window, layer, head) that sink; None without head scores)."""
    return _by_corpus(points, lambda p: p.entry.get("model_sink_rate"))


def perplexity_series(points: list[StepPoint]) -> Series:
    return _by_corpus(points, lambda p: p.entry.get("perplexity"))


def _largest_at(entry: dict[str, Any], dim: int) -> float | None:
    """The largest |value| of the run's located massive activations at `dim` (any block,
    position); None where none is at that dim."""
    values = [abs(e["value"]) for e in entry.get("massive") or [] if e["dim"] == dim]
    return max(values, default=None)


def massive_dims(points: list[StepPoint], count: int = MASSIVE_DIMS) -> list[int]:
    """The `count` dims whose located massive activations reach the largest |value| over all
    runs, largest first."""
    largest: dict[int, float] = {}
    for p in points:
        for e in p.entry.get("massive") or []:
            largest[e["dim"]] = max(largest.get(e["dim"], 0.0), abs(e["value"]))
    return sorted(largest, key=lambda d: (-largest[d], d))[:count]


def massive_dim_series(points: list[StepPoint], count: int = MASSIVE_DIMS) -> Series:
    """Per dim of `massive_dims`, its largest |value| in each run (None: not massive there)."""
    several = _several_lines(points)
    out: Series = {}
    for dim in massive_dims(points, count):
        for name, line in _by_corpus(points, lambda p, dim=dim: _largest_at(p.entry, dim)).items():
            out[f"dim {dim}, {name}" if several else f"dim {dim}"] = line
    return out


# ---------------------------------------------------------------------------------------
# figures


def step_scale(steps: list[int]) -> str:
    """`linear`, or where the steps span SPAN-fold or more (Pythia's step0, 1, 2, 4, ...,
    143000), `log`; `symlog` when step 0 is among them, as a log axis has no 0: linear from 0
    to the first step above 0, log beyond, so step 0 shows one decade left of it."""
    positive = [s for s in steps if s > 0]
    if not positive or max(positive) < SPAN * min(positive):
        return "linear"
    return "symlog" if 0 in steps else "log"


def _step_axis(ax: Axes, steps: list[int]) -> None:
    """The step axis over every run's step, a run with no value drawn (no massive dim at
    step 0) included, so the axis says which steps were measured."""
    scale, low, high = step_scale(steps), min(steps), max(steps)
    if scale == "symlog":
        first = min(s for s in steps if s > 0)
        ax.set_xscale("symlog", linthresh=first, linscale=1.0)
        ax.set_xlim(-0.15 * first, high * 1.5)
        # 0 and the powers of 10 from the first step on: none inside the linear part, where it would crowd 0
        decades = range(math.ceil(math.log10(first)), math.floor(math.log10(high)) + 1)
        ax.xaxis.set_major_locator(FixedLocator([0, *(10**k for k in decades)]))
        ax.set_xlabel(f"training step (symlog: linear 0 to {first}, log above)")
    elif scale == "log":
        ax.set_xscale("log")
        ax.set_xlim(low / 1.5, high * 1.5)
        ax.set_xlabel("training step (log)")
    else:
        margin = 0.04 * (high - low) or 1
        ax.set_xlim(low - margin, high + margin)
        ax.set_xlabel("training step")
    ax.grid(True, which="major", alpha=0.3)


def _line_figure(series: Series, title: str, ylabel: str, log_y: bool) -> tuple[Figure, Axes]:
    """One line per series against the step, markers on the runs."""
    fig = Figure(figsize=(8.5, 4.4), layout="constrained")
    ax = fig.subplots()
    for i, ((label, (steps, points)), color) in enumerate(zip(series.items(), style.colors(len(series)), strict=True)):
        ax.plot(steps, style.values(points), color=color, label=label, **style.overlap(i))
    _step_axis(ax, [s for steps, _ in series.values() for s in steps])
    if log_y:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    return fig, ax


def first_massive_figure(series: Series, n_layer: int, on: str) -> Figure:
    """The first massive block per step; a run without one on the top row, `none`."""
    shown = {label: (steps, [n_layer if v is None else v for v in values]) for label, (steps, values) in series.items()}
    fig, ax = _line_figure(shown, f"first massive layer: {on}", "first layer with a massive activation", log_y=False)
    ticks = list(range(0, n_layer, max(1, math.ceil(n_layer / 12))))
    ax.set_yticks([*ticks, n_layer], [*map(str, ticks), "none"])
    ax.set_ylim(-0.5, n_layer + 0.5)
    ax.axhline(n_layer - 0.5, color="0.6", lw=0.8, ls=":")
    return fig


def _has_values(series: Series) -> bool:
    return any(v is not None and v == v for _, values in series.values() for v in values)


# (FIGURES key, series, title, y label, log y, the line printed when no run has the statistic)
_STATISTICS: list[tuple[str, Callable[[list[StepPoint]], Series], str, str, bool, str]] = [
    ("step_peak", peak_series, "peak top-1/median", "peak top-1 / median over layers", True,
     "no training-step peak figure: no run has a top-1/median"),
    ("step_massive_dims", massive_dim_series, "largest massive activations",
     "largest |massive activation| at the dim\n(any layer, position; no marker: none there)", True,
     "no training-step massive-dims figure: no run located a massive activation"),
    ("step_sink_rate", sink_rate_series, "model sink rate", "model sink rate (share of heads x windows)", False,
     "no training-step sink-rate figure: no run has a model sink rate (run with model.analyses.head_scores on)"),
    ("step_perplexity", perplexity_series, "perplexity", "perplexity", True,
     "no training-step perplexity figure: no run has a perplexity (run with model.analyses.perplexity on)"),
]  # fmt: skip


def step_figures(runs: list[Run]) -> tuple[dict[str, Figure], list[str]]:
    """The step figures, by comparison.FIGURES key, of runs in step order (one model), and a
    line for each one skipped (no run has its statistic)."""
    points = step_points(runs)
    on = f"{step_model(runs)} ({BASELINE})"
    n_layer = max(p.n_layer for p in points)
    figures = {"step_first_massive": first_massive_figure(first_massive_series(points), n_layer, on)}
    skipped = []
    for key, build, title, ylabel, log_y, missing in _STATISTICS:
        series = build(points)
        if not _has_values(series):
            skipped.append(missing)
            continue
        fig, ax = _line_figure(series, f"{title}: {on}", ylabel, log_y)
        if key == "step_sink_rate":
            ax.set_ylim(-0.02, 1.02)
        figures[key] = fig
    return figures, skipped
