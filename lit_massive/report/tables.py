"""The run's end-of-run tables: the summary (markdown, for TensorBoard's text tab) and the
terminal's table, assembled from the columns each analysis gives (`Analysis.columns`).
Markdown tables and cells themselves are results/markdown.py's."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lit_massive.results.markdown import markdown_table

CHANGE = "%"  # a column whose title has it is a change vs the baseline (the terminal table's note says so)


def compared(corpora: Iterable[dict[str, dict]]) -> bool:
    """Whether some variant is compared with a baseline (every entry but a baseline's has
    `change_vs_baseline`): without one, the change columns would hold only dashes."""
    return any("change_vs_baseline" in entry for variants in corpora for entry in variants.values())


def _rows(
    variants: dict[str, dict], columns_of, first: Iterable[tuple[str, Any]], changes: bool = True
) -> tuple[list[str], list[list[str]]]:
    """Header and rows from each variant's columns (sorted by slot), after the `first` ones;
    without `changes`, no change vs baseline column."""
    head, rows = None, []
    for name, entry in variants.items():
        cells = sorted((c for c in columns_of(entry) if changes or CHANGE not in c.title), key=lambda c: c.slot)
        lead = [(title, fn(name, entry)) for title, fn in first]
        if head is None:
            head = [title for title, _ in lead] + [c.title for c in cells]
        rows.append([text for _, text in lead] + [c.text for c in cells])
    return head or [], rows


def summary_table(variants: dict[str, dict], columns_of) -> str:
    """One row per variant: what it prunes, then every analysis's summary cells (the changes
    vs the baseline only when there is a variant to compare)."""
    pruned = ("pruned heads", lambda n, v: " ".join(f"({layer},{head})" for layer, head in v["pruned_heads"]) or "-")
    head, rows = _rows(variants, columns_of, [("variant", lambda n, v: n), pruned], compared([variants]))
    return markdown_table(head, rows)


def terminal_summary(corpora: dict[str | None, dict[str, dict]], columns_of) -> str:
    """The end-of-run table for the terminal, one row per variant, columns from the analyses;
    with several corpora (`RunResults.by_corpus`), one row per corpus x variant, the corpus
    first. The % columns and their note only when some variant is compared with a baseline."""
    changes = compared(corpora.values())
    head, rows = [], []
    for corpus, variants in corpora.items():
        first = [("corpus", lambda n, v, corpus=corpus: corpus)] if len(corpora) > 1 else []
        head, more = _rows(variants, columns_of, [*first, ("variant", lambda n, v: n)], changes)
        rows += more
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    lines = ["  ".join(text.ljust(w) for text, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]
    note = [f"{CHANGE}: change vs baseline (top-1: mean over layers; largest: of any statistic at any layer)"]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:], *(note if changes else [])])
