"""Variants of the model measured in the same pass: pruned heads, selections by head score,
sweeps, and edits of a block output (typed specs, their checks, the run's plan)."""

from lit_massive.variants.checks import parse_variants
from lit_massive.variants.plan import VariantPlan
from lit_massive.variants.specs import (
    BASELINE,
    SCORES,
    Edit,
    PruneHeads,
    Select,
    SetMassive,
    SetRandom,
    Sweep,
    VariantSpec,
    ZeroRandomWeights,
    ZeroWeights,
    as_sweep,
    describe_sweep,
    rank_heads,
)

__all__ = [
    "BASELINE",
    "SCORES",
    "Edit",
    "PruneHeads",
    "Select",
    "SetMassive",
    "SetRandom",
    "Sweep",
    "VariantPlan",
    "VariantSpec",
    "ZeroRandomWeights",
    "ZeroWeights",
    "as_sweep",
    "describe_sweep",
    "parse_variants",
    "rank_heads",
]
