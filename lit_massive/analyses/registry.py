"""The registry of analyses (as lm-eval registers its tasks), and what is assembled from
all of them: the run's analysis options (`AnalysisOptions`, ``model.analyses.*``), a
variant's results.json entry and the end-of-run tables' columns."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lit_massive.analyses.base import Analysis, Column
from lit_massive.errors import InputError
from lit_massive.options import check_options
from lit_massive.results.names import SCORES

ANALYSES: dict[str, type[Analysis]] = {}
LAYERS = "layers"  # the per-layer rows of a variant entry, which several analyses add keys to


def register_analysis(cls: type[Analysis]) -> type[Analysis]:
    """Class decorator: list an analysis in `ANALYSES` under its `name`, and its options
    group (if it declares `Options`) in `AnalysisOptions`."""
    if cls.name in ANALYSES and ANALYSES[cls.name] is not cls:
        raise ValueError(f"analysis {cls.name!r} is registered twice")
    ANALYSES[cls.name] = cls
    SCORES.update(cls.head_figures)  # `by` values of selections, sweeps and rank-heads
    _build_options()
    return cls


def unregister_analysis(name: str) -> None:
    """Take an analysis out of the registry again (its options group, its head figures)."""
    cls = ANALYSES.pop(name)
    for by in cls.head_figures:
        SCORES.pop(by, None)
    _build_options()


def option_groups() -> dict[str, type[Analysis]]:
    """Each options group (``model.analyses.<group>``) and the analysis that declares it."""
    return {cls.options_group(): cls for cls in ANALYSES.values() if cls.Options is not None}


def _summary(cls: type[Analysis]) -> str:
    return " ".join((cls.Options.__doc__ or cls.name).split("\n\n")[0].split())


def _build_options() -> None:
    """(Re)build `AnalysisOptions` from the registered groups: LightningCLI reads its fields
    (and their docs) when it builds ``validate``'s parser, so a registered analysis's options
    reach the CLI, ``--help``, `measure()` and the run with no line elsewhere."""
    global AnalysisOptions
    fields = []
    for group, cls in option_groups().items():
        if cls.optional:
            fields.append((group, cls.Options | None, dataclasses.field(default=None)))
        else:
            fields.append((group, cls.Options, dataclasses.field(default_factory=cls.Options)))
    doc = "Each analysis's options.\n\nArgs:\n" + "".join(
        f"    {group}: {_summary(cls)}\n" for group, cls in option_groups().items()
    )
    AnalysisOptions = dataclasses.make_dataclass("AnalysisOptions", fields, namespace={"__doc__": doc})
    AnalysisOptions.__module__ = __name__  # jsonargparse finds the class by its module and name


AnalysisOptions: type = dataclasses.make_dataclass("AnalysisOptions", [])


def moved_options() -> dict[str, str]:
    """Old spellings of analysis options (``model.head_scores``) -> their place now
    (``model.analyses.head_scores.enabled``)."""
    moved = {}
    for group, cls in option_groups().items():
        for old, field in cls.moved.items():
            moved[old] = f"analyses.{group}" + (f".{field}" if field else "")
    return moved


def analysis_options(given: Any = None) -> Any:
    """`given` (None, an `AnalysisOptions`, or a mapping group -> a dict of its options, its
    `Options`, true/false for its ``enabled``, or null for an optional group) as an
    `AnalysisOptions`, every value checked: an unknown group or option, or a bad value, is
    one line naming it and what is valid."""
    if given is None:
        return AnalysisOptions()
    if dataclasses.is_dataclass(given) and not isinstance(given, type):
        given = {f.name: getattr(given, f.name) for f in dataclasses.fields(given)}
    if not isinstance(given, Mapping):
        raise InputError(f"analyses={given!r}: give a mapping of analysis name -> its options")
    groups = option_groups()
    unknown = [name for name in given if name not in groups]
    if unknown:
        raise InputError(f"analyses: no analysis options {unknown[0]!r}; valid: {', '.join(groups)}")
    return AnalysisOptions(**{name: _group_options(name, groups[name], value) for name, value in given.items()})


def _group_options(group: str, cls: type[Analysis], value: Any) -> Any:
    options_type = cls.Options
    names = [f.name for f in dataclasses.fields(options_type)]
    if value is None and cls.optional:
        return None
    if isinstance(value, options_type):
        value = {name: getattr(value, name) for name in names}
    if isinstance(value, bool) and "enabled" in names:
        value = {"enabled": value}
    if not isinstance(value, Mapping):
        raise InputError(f"analyses.{group}={value!r}: give a mapping of its options ({', '.join(names)})")
    unknown = [key for key in value if key not in names]
    if unknown:
        raise InputError(f"analyses.{group}: no option {unknown[0]!r}; valid: {', '.join(names)}")
    check_options(options_type.__init__, value, prefix=f"analyses.{group}.")
    return options_type(**value)


def analysis_class(name: str) -> type[Analysis]:
    """The registered analysis `name`, or an error listing the registered ones."""
    if name not in ANALYSES:
        raise InputError(f"analysis {name!r} is not registered; registered: {', '.join(ANALYSES)}")
    return ANALYSES[name]


def enabled_analyses(options: Any) -> list[type[Analysis]]:
    """The registered analyses this run's options (an `AnalysisOptions`) turn on, in registry
    order: each one whose groups are on and whose `reads` are on too."""

    def on(cls: type[Analysis]) -> bool:
        return cls.enabled(options) and all(on(ANALYSES[name]) for name in cls.reads)

    return [cls for cls in ANALYSES.values() if on(cls)]


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
        if name in ran and cls.reads:  # the states it reads, under their names, beside its own
            computed = {**computed, name: {**computed.get(name, {}), **{r: computed[r] for r in cls.reads}}}
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
