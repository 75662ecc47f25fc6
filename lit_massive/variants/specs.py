"""Variant specs: which heads each variant prunes and how it edits a block output.

The forms users write under ``model.variants`` are typed here (``list[Head]``, `Select`,
`PruneHeads`, `SetMassive`, `SetRandom`), so LightningCLI checks their shape and documents
them in ``--help``; `checks.parse_variants` then checks their values against the model.
An edit's hook lives on its spec.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Union

from torch import Tensor

from lit_massive.probes.hooks import BlockEdit
from lit_massive.report import ranking

# the baseline's name, the orders and what a selection ranks heads by (-> results.json key),
# defined with the ranking, which imports no torch
from lit_massive.report.ranking import BASELINE, ORDERS, SCORES  # noqa: F401
from lit_massive.variants.edits import set_entries, zero_massive, zero_random

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:  # pragma: no cover
    from typing_extensions import NotRequired, TypedDict

EDITS = ("zero", "mean")
Head = tuple[int, int]
# the control's per-window seed is seed * SEED_STRIDE + window index: distinct seeds for
# distinct (seed, window) pairs while a run has fewer windows than this prime
SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class Edit:
    """What a variant did to block `layer`'s output, as results.json records it: `to` is
    `zero`, `mean` (values from `source`, a results.json, or this run's first pass) or
    `random` (the control, drawn with `seed`)."""

    layer: int
    to: str
    source: str | None = None
    seed: int = 0
    entries: int | None = None  # `mean`: how many located (dim, position) entries it sets
    note: str | None = None  # why the edit changed nothing, when it did


class MeanEntries(NamedTuple):
    """Located massive entries of one block and the mean value each gets: (n,) tensors."""

    positions: Tensor
    dims: Tensor
    values: Tensor


@dataclass
class Select:
    """Prune the first `k` heads of a ranking by head score: ``select: top`` (highest
    first) or ``bottom``; ``by: first_token`` (attention on token 0) or ``massive_tokens``
    (attention on the window's massive tokens); `scores`: a results.json to rank by, null:
    this run's baseline scores (from a first pass over the same windows)."""

    select: str
    k: int
    scores: str | None = None
    by: str = "first_token"


# a mapping, not a dataclass: its YAML key `from` is a Python keyword
SetMassiveArgs = TypedDict("SetMassiveArgs", {"layer": int, "to": str, "from": NotRequired[Union[str, None]]})  # noqa: UP007


class SetRandomArgs(TypedDict):
    layer: int
    seed: NotRequired[int]


@dataclass
class SetMassive:
    """Set the massive entries of block ``layer``'s output ``to: zero``, or ``to: mean``: the
    located (dim, position) entries get their mean value, from ``from: results.json`` or
    (null) this run's first pass; optionally with `prune_heads`."""

    set_massive: SetMassiveArgs
    prune_heads: list[Head] = field(default_factory=list)

    @property
    def layer(self) -> int:
        return self.set_massive["layer"]

    @property
    def to(self) -> str:
        return self.set_massive["to"]

    @property
    def source(self) -> str | None:
        return self.set_massive.get("from")

    def record(self) -> Edit:
        return Edit(self.layer, self.to, self.source)

    def block_edit(
        self, threshold: float, ratio: float, windows: Sequence[int], means: MeanEntries | None
    ) -> BlockEdit:
        """The (layer, fn) that probes() applies to this variant's forward pass."""
        if self.to == "zero":
            return self.layer, lambda x: zero_massive(x, threshold, ratio)
        positions, dims, values = means
        return self.layer, lambda x: set_entries(x, positions, dims, values)


@dataclass
class SetRandom:
    """The control for `SetMassive`: zero as many randomly chosen non-massive entries of
    block ``layer``'s output per window (``seed``); optionally with `prune_heads`."""

    set_random: SetRandomArgs
    prune_heads: list[Head] = field(default_factory=list)

    @property
    def layer(self) -> int:
        return self.set_random["layer"]

    @property
    def seed(self) -> int:
        return self.set_random.get("seed", 0)

    def record(self) -> Edit:
        return Edit(self.layer, "random", None, self.seed)

    def block_edit(
        self, threshold: float, ratio: float, windows: Sequence[int], means: MeanEntries | None
    ) -> BlockEdit:
        """The (layer, fn) for one batch: one generator per window, seeded by the window's
        index, so any number of processes draws the same entries."""
        seeds = [self.seed * SEED_STRIDE + int(i) for i in windows]  # host ints (the data module keeps them)
        return self.layer, lambda x: zero_random(x, threshold, ratio, seeds)


@dataclass
class PruneHeads:
    """``{prune_heads: [[layer, head], ...]}``: the edit forms' mapping without an edit,
    the same as the plain list."""

    prune_heads: list[Head]


VariantSpec = Union[list[Head], Select, PruneHeads, SetMassive, SetRandom]  # noqa: UP007
# each mapping form's key -> an example, named in a one-line error when a form lacks a key
# (`select needs k: {select: top, k: 3}`) or has one no form knows
FORM_EXAMPLES = {
    "select": "{select: top, k: 3}",
    "prune_heads": "{prune_heads: [[5, 1], [8, 3]]}",
    "set_massive": "{set_massive: {layer: 2, to: zero}}",
    "set_random": "{set_random: {layer: 2, seed: 0}}",
}
BlockEditSpec = Union[SetMassive, SetRandom]  # noqa: UP007


@dataclass
class Sweep:
    """Cumulative pruning: one variant per k, pruning the first k heads of `order`."""

    order: str = "top"
    k: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    seed: int = 0  # for order: random
    scores: str | None = None  # results.json to rank by; null: this run's baseline scores
    by: str = "first_token"  # or massive_tokens: which head score ranks the heads


def sweep_names(sweep: Sweep | None) -> dict[str, int]:
    """Variant name -> k for a sweep."""
    return {} if sweep is None else {f"sweep_{sweep.order}_{k}": k for k in sweep.k}


def describe_sweep(sweep: Sweep | None) -> dict | None:
    """The sweep's order, k values and variant names, for results.json and its figure."""
    if sweep is None:
        return None
    names = sweep_names(sweep)
    return {
        "order": sweep.order,
        "seed": sweep.seed,
        "by": sweep.by,
        "k": list(names.values()),
        "variants": list(names),
    }


def rank_heads(scores: Tensor | Sequence[Sequence[float | None]], order: str) -> list[Head]:
    """All heads of (L, H) `scores` (a tensor or rows) by score, highest first for `top`,
    lowest first for `bottom`; ties keep (layer, head) order, NaN scores last
    (`report.ranking.rank_heads`)."""
    return ranking.rank_heads(scores.tolist() if hasattr(scores, "tolist") else scores, order)
