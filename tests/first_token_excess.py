"""An analysis as a user would add one, in one file and nothing else edited: an option, its
own results.json key, a per-head figure that can rank heads, and a dependency on another
analysis's computed state (the head scores'). tests/test_analysis_registry.py imports it,
which registers it, and takes it out again afterwards."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lit_massive.analyses import Analysis, register_analysis
from lit_massive.analyses.head_scores import matrix


@dataclass
class FirstTokenExcessOptions:
    """How much more than a share of its attention each head puts on the first token.

    Args:
        enabled: measure it (with the head scores, which it reads).
        share: the share of attention subtracted from each head's first-token score.
    """

    enabled: bool = False
    share: float = 0.25


@register_analysis
class FirstTokenExcess(Analysis):
    """`first_token_excess` (L x H): each head's first-token score minus `share`."""

    name = "first_token_excess"
    Options = FirstTokenExcessOptions
    reads = ("head_scores",)  # no state of its own: one copy, the head scores'
    keys = ("first_token_excess",)
    head_figures = {"first_token_excess": "first_token_excess"}

    def __init__(self, setup) -> None:
        super().__init__(setup)
        self.share = setup.of(self.name).share

    def section(self, computed: dict[str, Any], decode: Callable[[int], str]) -> dict[str, Any]:
        return {"first_token_excess": matrix(computed["head_scores"]["first_token"] - self.share)}
