"""Results as markdown text: a table (TensorBoard's text tab renders it) and a number as a
cell. The analyses' tables, the rankings, the run's and `compare`'s tables all use these."""

from __future__ import annotations


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    """A markdown table with the header `head`."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def cell(value: float | None, fmt: str = ".4g") -> str:
    """A number as a table cell; an unmeasured (null) one as n/a."""
    return "n/a" if value is None else format(value, fmt)
