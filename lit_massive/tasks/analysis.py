"""Downstream tasks as an analysis of the registry: each variant's lm-eval scores in its
results.json entry (`tasks`), their change vs the baseline, a column per task in the
end-of-run tables, TensorBoard scalars and a table. It measures after the pass: the module
calls `evaluate_tasks` once the analyses' states are computed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lit_massive.analyses import Analysis, Column, Setup, register_analysis
from lit_massive.results.markdown import markdown_table
from lit_massive.tasks.scores import change_key, change_of, main_metric, metric_names, score_cell, stderr_name
from lit_massive.tasks.spec import Tasks, check_tasks, check_tasks_strategy

SLOT = 90  # the tasks' columns come after every other analysis's


@register_analysis
class TaskScores(Analysis):
    """Each variant's scores on lm-evaluation-harness tasks (`model.analyses.tasks`), evaluated with
    the variant active after the validation pass, through lm-eval's own Hugging Face wrapper
    around the loaded model: `tasks` holds `{task: {metric: value, metric_stderr: value}}` as
    lm-eval reports them (`metric,filter` where the filter is not lm-eval's default `none`),
    the same on every corpus; `change_vs_baseline.tasks` the change in points (100 x the
    difference; `METRIC_pct`, relative, for a perplexity). The run's top-level `tasks` says
    what was evaluated: the lm-eval version, each task's version, documents and output type."""

    name = "tasks"
    Options = Tasks
    optional = True
    moved = {"tasks": ""}
    keys = ("tasks",)

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.tasks = setup.of("tasks")
        self.record: dict[str, Any] | None = None

    @classmethod
    def check(cls, setup: Setup, plan: Any) -> None:
        check_tasks(setup.of("tasks"), plan)  # lm-eval there, every task known, its data at hand

    def evaluate(self, module: Any) -> dict[str, dict[str, Any]]:
        """Every variant on the tasks: per measured name (each corpus's name of each variant:
        a variant's scores do not depend on the corpus) its `tasks` entry."""
        from lit_massive.tasks.harness import evaluate  # imports lm-eval

        by_variant, self.record = evaluate(module, self.tasks)
        names = module.plan.names
        return {key: by_variant[name] for keys in module.measured for key, name in zip(keys, names, strict=True)}

    def section(self, computed: dict[str, Any], decode: Callable[[int], str]) -> dict[str, Any]:
        return {"tasks": computed}

    def finish(self, module: Any, variants: dict[str, dict]) -> dict[str, Any] | None:
        return self.record

    @classmethod
    def change(cls, entry: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
        mine, theirs = entry.get("tasks"), baseline.get("tasks")
        if not mine or not theirs:
            return {}
        return {
            "tasks": {
                task: {
                    change_key(m): change_of(m, scores[m], theirs.get(task, {}).get(m)) for m in metric_names(scores)
                }
                for task, scores in mine.items()
            }
        }

    @classmethod
    def publish(cls, out, model: str, name: str, entry: dict[str, Any]) -> None:
        change = (entry.get("change_vs_baseline") or {}).get("tasks", {})
        for task, scores in (entry.get("tasks") or {}).items():
            for m in metric_names(scores):
                out.scalar(f"{name}/tasks/{task}/{m}", scores[m], 0)
                out.scalar(f"{name}/tasks/{task}/{change_key(m)}_change", change.get(task, {}).get(change_key(m)), 0)

    @classmethod
    def publish_run(cls, out, model: str, results) -> None:
        """Every variant's scores, with their standard errors, as one table (the default corpus's run)."""
        record, variants = results.sections.get("tasks"), results.variants
        first = next(iter(variants.values()), {}).get("tasks")
        if not record or not first:
            return
        head = ["variant", *(f"{task} {m}" for task, scores in first.items() for m in metric_names(scores))]
        rows = []
        for name, entry in variants.items():
            row = [name]
            for scores in entry["tasks"].values():
                for m in metric_names(scores):
                    value, err = scores[m], scores.get(stderr_name(m))
                    row.append("n/a" if value is None else f"{value:.4g}" + ("" if err is None else f" ± {err:.2g}"))
            rows.append(row)
        out.text("tasks/table", f"lm-eval {record['lm_eval_version']}\n\n{markdown_table(head, rows)}")

    @classmethod
    def columns(cls, entry: dict[str, Any]) -> list[Column]:
        """A column per task: its main score (`acc` where it has one) and, for a variant, its change."""
        change = entry.get("change_vs_baseline")
        cells = []
        for i, (task, scores) in enumerate((entry.get("tasks") or {}).items()):
            m = main_metric(scores)
            if m is not None:
                moved = None if change is None else change.get("tasks", {}).get(task, {}).get(change_key(m))
                cells.append(Column(SLOT + i, f"{task} {m}", score_cell(m, scores[m], moved, change is not None)))
        return cells

    @classmethod
    def summary_columns(cls, entry: dict[str, Any]) -> list[Column]:
        return cls.columns(entry)


def evaluate_tasks(module: Any) -> dict[str, dict[str, Any]]:
    """`model.analyses.tasks` on every variant after the pass, keyed as the analyses' computed states
    are: {"tasks": {measured name: that variant's scores}}; {} without tasks. A collective
    under several processes: every rank calls it."""
    for analysis in module.analyses:
        if isinstance(analysis, TaskScores):
            check_tasks_strategy(module.trainer, analysis.tasks)
            return {analysis.name: analysis.evaluate(module)}
    return {}
