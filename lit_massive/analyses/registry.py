"""The registry of analyses (as lm-eval registers its tasks), and what is assembled from
all of them: a variant's results.json entry and the end-of-run tables' columns."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lit_massive.analyses.base import Analysis, Column
from lit_massive.errors import InputError

ANALYSES: dict[str, type[Analysis]] = {}
LAYERS = "layers"  # the per-layer rows of a variant entry, which several analyses add keys to


def register_analysis(cls: type[Analysis]) -> type[Analysis]:
    """Class decorator: list an analysis in `ANALYSES` under its `name`."""
    if cls.name in ANALYSES and ANALYSES[cls.name] is not cls:
        raise ValueError(f"analysis {cls.name!r} is registered twice")
    ANALYSES[cls.name] = cls
    return cls


def analysis_class(name: str) -> type[Analysis]:
    """The registered analysis `name`, or an error listing the registered ones."""
    if name not in ANALYSES:
        raise InputError(f"analysis {name!r} is not registered; registered: {', '.join(ANALYSES)}")
    return ANALYSES[name]


def enabled_analyses(options: Mapping[str, Any]) -> list[type[Analysis]]:
    """The registered analyses this run's options turn on, in registry order."""
    return [cls for cls in ANALYSES.values() if cls.enabled(options)]


def variant_entry(
    head: dict[str, Any],
    computed: Mapping[str, Mapping[str, Any]],
    analyses: Iterable[Analysis],
    decode: Callable[[int], str],
    baseline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One variant's results.json entry: `head` (what the variant is), then every registered
    analysis's keys in registry order (null for one that is off or was not run), then, for
    every variant but the baseline, `change_vs_baseline`. `computed` maps an analysis name to
    this variant's computed state."""
    ran = {a.name: a for a in analyses}
    entry = dict(head)
    for name, cls in ANALYSES.items():
        if name in ran and name in computed:
            merge_section(entry, ran[name].section(computed[name], decode))
        else:
            entry.update(dict.fromkeys(cls.keys))
            if cls.layer_keys and isinstance(entry.get(LAYERS), list):
                merge_section(entry, {LAYERS: [dict.fromkeys(cls.layer_keys) for _ in entry[LAYERS]]})
    if baseline is not None:
        change = [cls.change(entry, baseline) for cls in ANALYSES.values()]
        entry["change_vs_baseline"] = {key: value for part in change for key, value in part.items()}
    return entry


def merge_section(entry: dict[str, Any], section: Mapping[str, Any]) -> None:
    """Add one analysis's section to a variant entry. `layers` rows are shared: when the entry
    has them already (the layer profile's), the section's rows are merged into them row by
    row, the existing keys first, so each analysis adds its keys of a layer (`layer_keys`)
    instead of replacing the rows; every other key is set."""
    for key, value in section.items():
        rows = entry.get(key)
        if key == LAYERS and isinstance(rows, list) and isinstance(value, list):
            if len(value) != len(rows):
                raise ValueError(f"a section has {len(value)} {LAYERS} rows, the entry {len(rows)}")
            entry[key] = [{**row, **extra} for row, extra in zip(rows, value, strict=True)]
        else:
            entry[key] = value


def columns_of(entry: dict[str, Any]) -> list[Column]:
    """Every analysis's cells of the terminal table for one variant entry."""
    return [c for cls in ANALYSES.values() for c in cls.columns(entry)]


def summary_columns_of(entry: dict[str, Any]) -> list[Column]:
    """Every analysis's cells of TensorBoard's summary table for one variant entry."""
    return [c for cls in ANALYSES.values() for c in cls.summary_columns(entry)]
