"""The run's enabled analyses held together, as torchmetrics' `MetricCollection` holds
metrics: what their probes must record, what each block's hook reduces for them, one
update and one compute for all, and a variant's results.json entry from their states."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import Tensor, nn

from lit_massive.analyses.base import Analysis, Block, Forward, Setup
from lit_massive.analyses.registry import ANALYSES, enabled_analyses, variant_entry
from lit_massive.probes import Needs, Probed
from lit_massive.probes.block_stats import BlockStats
from lit_massive.probes.hooks import Reducers

STATS = "block_stats"  # the reducer every pass runs: each block output's `BlockStats`


class AnalysisCollection(nn.ModuleList):
    """The analyses this run's options turn on (or `classes`), built from one `Setup`."""

    def __init__(self, setup: Setup, classes: Iterable[type[Analysis]] | None = None) -> None:
        chosen = enabled_analyses(setup.options["analyses"]) if classes is None else classes
        super().__init__([cls(setup) for cls in chosen])
        self.setup = setup

    @property
    def needs(self) -> Needs:
        """What the probes must record for these analyses."""
        needs = Needs()
        for analysis in self:
            needs = needs | analysis.needs
        return needs

    def reducers(self, stats_of: Callable[[Tensor], BlockStats]) -> Reducers:
        """What these analyses keep of each block, computed in the block's hook: the block
        output's `BlockStats` first (`STATS`), then each analysis's `reduce_block`, which sees
        them (`Block`)."""

        def block(x: Tensor, i: int, probed: Probed) -> Block:
            stats = probed.reduced[STATS]
            return Block(i, x, stats[i], stats[i - 1] if i else None, probed)

        def reducer(analysis: Analysis) -> Callable[[Tensor, int, Probed], Any]:
            return lambda x, i, probed: analysis.reduce_block(block(x, i, probed))

        return {STATS: lambda x, i, probed: stats_of(x), **{a.name: reducer(a) for a in self if a.reduces_blocks}}

    def update(self, variant: str, forward: Forward) -> None:
        """One forward pass of `variant`, for every analysis."""
        for analysis in self:
            analysis.update(variant, forward)

    def compute(self) -> dict[str, dict[str, Any]]:
        """Analysis name -> measured name -> its computed state (a collective: every rank)."""
        return {a.name: a.compute() for a in self}

    def entry(
        self,
        head: dict[str, Any],
        computed: Mapping[str, Mapping[str, Any]],
        key: str,
        decode: Callable[[int], str],
        baseline: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The results.json entry of the variant measured as `key`, from `compute()`'s states."""
        this = {name: by_key[key] for name, by_key in computed.items() if key in by_key}
        return variant_entry(head, this, self, decode, baseline)

    def sections(self, module: Any, variants: dict[str, dict]) -> dict[str, Any]:
        """Each analysis's top-level results.json section, computed after the pass."""
        return {a.name: a.finish(module, variants) for a in self}


def providers(keys: set[str]) -> list[type[Analysis]]:
    """The registered analyses whose results hold any of `keys` (the baseline keys the
    variants are defined by), with the analyses they read, in registry order."""
    names = {cls.name for cls in ANALYSES.values() if keys & set(cls.keys)}
    while True:
        more = names | {read for name in names for read in ANALYSES[name].reads}
        if more == names:
            return [cls for name, cls in ANALYSES.items() if name in names]
        names = more
