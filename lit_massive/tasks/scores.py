"""lm-eval scores as results.json holds them (`{task: {metric: value, metric_stderr: value}}`):
which are metrics, which one a table shows, how a change vs the baseline is counted, and a
score as a table cell. Plain Python: `compare` reads them without torch."""

from __future__ import annotations

# lm-eval's metrics that are not shares of documents: their change is relative (%), not in points
RELATIVE = ("perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")
STDERR = "_stderr"


def metric_names(scores: dict[str, float | None]) -> list[str]:
    """A task's metrics without their standard errors (`acc`, `acc_norm`, `exact_match,strict-match`)."""
    return [key for key in scores if STDERR not in key.partition(",")[0]]


def stderr_name(metric: str) -> str:
    """The key of a metric's standard error: `acc_stderr`, `exact_match_stderr,strict-match`."""
    name, sep, kept = metric.partition(",")
    return f"{name}{STDERR}{sep}{kept}"


def main_metric(scores: dict[str, float | None]) -> str | None:
    """The metric a table shows for a task: `acc` where the task has it, else its first."""
    names = metric_names(scores)
    return "acc" if "acc" in names else (names[0] if names else None)


def is_relative(metric: str) -> bool:
    return metric.partition(",")[0] in RELATIVE


def change_key(metric: str) -> str:
    """A metric's key in `change_vs_baseline.tasks`: itself (points), `METRIC_pct` for a perplexity."""
    return f"{metric}_pct" if is_relative(metric) else metric


def change_of(metric: str, new: float | None, old: float | None) -> float | None:
    """One metric's change vs the baseline: points (100 x the difference) for a share such as
    an accuracy, 100 x the relative difference for a perplexity; null where either is."""
    if new is None or old is None:
        return None
    if is_relative(metric):
        return 100.0 * (new - old) / old if old else None
    return 100.0 * (new - old)


def score_cell(metric: str, value: float | None, change: float | None, compared: bool) -> str:
    """A score as a table cell: a share in percent (`62.5`), a perplexity as it is; with its
    change for a variant compared with a baseline (`50.0 (-12.5 pts)`, `954.8 (+3.1%)`)."""
    if value is None:
        return "n/a"
    text = f"{value:.4g}" if is_relative(metric) else f"{100 * value:.1f}"
    if not compared:
        return text
    if change is None:
        return f"{text} (-)"
    return f"{text} ({change:+.1f}%)" if is_relative(metric) else f"{text} ({change:+.1f} pts)"
