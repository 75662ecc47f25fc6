"""What an analysis is: one thing we measure, in one file.

An `Analysis` says what it needs from a forward pass (`needs`), keeps one torchmetrics
state per variant (`new_metric`; exact sums, synced across processes by torchmetrics),
turns its computed state into its keys of a variant's results.json entry (`section`,
`change`), and publishes those keys (`publish`: TensorBoard scalars, figures, markdown
tables; `columns`: the end-of-run tables). The LightningModule runs one forward pass per
variant under the probes the enabled analyses asked for and hands each analysis a
`Forward`; it names no analysis itself. A new analysis is a subclass decorated with
`@register_analysis` (see `lit_massive.analyses`), like lm-eval's registered tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property, wraps
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities.data import apply_to_collection

from lit_massive.models.families import DecoderLayout
from lit_massive.probes import Needs, Probed
from lit_massive.probes.attention import HeadRecord
from lit_massive.probes.block_stats import BlockStats, massive_positions

if TYPE_CHECKING:
    from lit_massive.figures.publishing import Publisher
    from lit_massive.results.schema import RunResults


class _Unsqueezed:
    """A `compute` result held where torchmetrics does not look: it squeezes every
    one-element tensor it returns, so a one-layer model's (1,) per-layer state became a
    scalar that no per-layer code can iterate."""

    def __init__(self, value: Any) -> None:
        self.value = value


class SumStatesMetric(Metric):
    """A metric of sums whose states keep their dtype (float64, int64) when the module is
    cast to half precision (`16-true` / `bf16-true` call `module.to(dtype)`, which would
    otherwise turn float64 sums into float16 ones), and whose `compute` keeps its shapes."""

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def _wrap_compute(self, compute: Callable) -> Callable:
        synced = super()._wrap_compute(lambda *args, **kwargs: _Unsqueezed(compute(*args, **kwargs)))

        @wraps(compute)
        def shaped(*args, **kwargs) -> Any:  # torchmetrics clones what it returns: so do we
            return apply_to_collection(synced(*args, **kwargs).value, Tensor, lambda x: x.clone())

        return shaped

    def add_state(self, name: str, default: Tensor | list, *args, **kwargs) -> None:
        super().add_state(name, default, *args, **kwargs)
        if isinstance(default, Tensor):
            self.__dict__.setdefault("_state_dtypes", {})[name] = default.dtype

    def _apply(self, fn: Callable, *args, **kwargs) -> Metric:
        out = super()._apply(fn, *args, **kwargs)
        for name, dtype in self.__dict__.get("_state_dtypes", {}).items():
            setattr(self, name, getattr(self, name).to(dtype))
            self._defaults[name] = self._defaults[name].to(dtype)
        return out


def cat_rows(state: list[Tensor] | Tensor, width: int) -> Tensor:
    """A "cat" state as one tensor (after a sync it already is one)."""
    if isinstance(state, Tensor):
        return state
    return torch.cat(state) if state else torch.zeros(0, width, dtype=torch.float64)


def valid_rows(rows: Tensor) -> Tensor:
    """Fixed-shape candidate rows whose last column says they hold a real entry, without it
    (once per epoch, so the host may read the mask here)."""
    return rows[rows[:, -1] > 0][:, :-1]


@dataclass
class Forward:
    """One forward pass of one variant over one batch, as the analyses receive it."""

    input_ids: Tensor  # (B, T)
    score_from: Tensor  # (B,): the first position whose token is scored (perplexity)
    probed: Probed  # what the probes recorded, per layer
    stats: list[BlockStats]  # per layer: the block output's statistics, computed once
    final_hidden: Tensor  # (B, T, D): the backbone's output, after the final norm
    layout: DecoderLayout
    # host ints, per window: UTF-8 bytes and words of the text its scored tokens cover
    # (`data.windows.window_text_counts`); None for windows given without text
    scored_bytes: list[int] | None = None
    scored_words: list[int] | None = None

    @cached_property
    def massive_tokens(self) -> Tensor:
        """(B, T) bool: each window's massive tokens (some block output is massive there)."""
        return massive_positions(self.stats, self.input_ids.shape[1])


@dataclass
class Block:
    """One block as its output hook sees it, for `Analysis.reduce_block`: its output, the
    statistics of that output and of the stream it read, and (with `Needs.sublayers` /
    `Needs.head_update`) its records of T x D, which are released when the hook returns."""

    index: int
    output: Tensor  # (B, T, D)
    stats: BlockStats  # of `output`
    entering: BlockStats | None  # of the previous block's output, the stream this block read (None: block 0)
    probed: Probed

    @property
    def head(self) -> HeadRecord | None:
        """This block's attention record (`Needs.heads`)."""
        return self.probed.heads[self.index] if self.probed.heads else None

    @property
    def sublayers(self) -> tuple[Tensor, Tensor, Tensor]:
        """(block input, what attention adds, what the MLP adds), each (B, T, D) (`Needs.sublayers`)."""
        p, i = self.probed, self.index
        return p.resid_in[i], p.attn[i], p.mlp[i]

    def entering_tokens(self) -> Tensor:
        """(B, T) bool: the massive tokens of the stream this block reads, the positions where
        the previous block's output meets the massive criterion (none for block 0: the
        embeddings are not measured, as everywhere in the project)."""
        if self.entering is None:
            return torch.zeros(self.output.shape[:2], dtype=torch.bool, device=self.output.device)
        return massive_positions([self.entering], self.output.shape[1])


@dataclass(frozen=True)
class Setup:
    """What an analysis is built from: the model's layout, the run's options (the module's
    ``model.*`` hyperparameters, each analysis's own under ``analyses``: `of`) and the
    variants it measures."""

    layout: DecoderLayout
    options: Mapping[str, Any]
    variants: tuple[str, ...]

    def of(self, group: str) -> Any:
        """The options of one analysis group (its `Options` dataclass; None when it is off)."""
        return getattr(self.options["analyses"], group)


@dataclass(frozen=True)
class Column:
    """One cell of an end-of-run table; `slot` orders the columns of all analyses."""

    slot: int
    title: str
    text: str


class Analysis(nn.Module):
    """One thing we measure: what it needs from a pass, its per-variant metrics, its
    results.json keys and how they are published. Subclasses set the class attributes and
    implement `new_metric` and `section`; everything else has a default that does nothing."""

    name: ClassVar[str]  # the registry name
    # its options (``model.analyses.GROUP.*``): a dataclass with typed, documented fields; a
    # field ``enabled`` turns it on and off; `optional`: the group is null (off) or settings
    Options: ClassVar[type | None] = None
    group: ClassVar[str | None] = None  # whose options it reads and shares; None: its own name
    optional: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ()  # groups that must be on for it to run (it reads their options)
    # an option's old spelling, model.OLD, -> its field here: a config in it fails with the new one
    moved: ClassVar[dict[str, str]] = {}
    # analyses whose computed state its `section` reads (one copy of each state): the state of
    # each is under its name in the `computed` that `section` gets; it runs only with them
    reads: ClassVar[tuple[str, ...]] = ()
    # the per-head (L, H) figures it writes that can rank heads (selections, sweeps,
    # rank-heads): the name a `by` gives -> its results.json key
    head_figures: ClassVar[dict[str, str]] = {}
    needs: ClassVar[Needs] = Needs()
    keys: ClassVar[tuple[str, ...]] = ()  # its keys of a variant's entry; null when it is off
    # its keys of each `layers` row (a section returning `layers` adds them to the layer
    # profile's rows); null when it is off
    layer_keys: ClassVar[tuple[str, ...]] = ()
    # in each block's hook, `reduce_block(block)` is kept in `forward.probed.reduced[name]`
    # instead of the output or the sublayers themselves, so memory stays flat in depth
    reduces_blocks: ClassVar[bool] = False

    def __init__(self, setup: Setup) -> None:
        super().__init__()
        metrics = {v: self.new_metric(setup) for v in setup.variants}
        self.metrics = nn.ModuleDict({v: m for v, m in metrics.items() if m is not None})

    @classmethod
    def options_group(cls) -> str:
        """The name of the options group it reads: ``model.analyses.<group>``."""
        return cls.group or cls.name

    @classmethod
    def enabled(cls, analyses: Any) -> bool:
        """Whether this run's analysis options (an `AnalysisOptions`) turn the analysis on:
        its group is on, and so is every group it requires."""
        return all(group_on(analyses, g) for g in (cls.options_group(), *cls.requires))

    @classmethod
    def check(cls, setup: Setup, plan: Any) -> None:
        """Refuse, in one line and before any work, options this run cannot honour (`plan`:
        the run's `VariantPlan`)."""

    def new_metric(self, setup: Setup) -> Metric | None:
        """A new, empty state for one variant (None: the analysis measures after the pass)."""
        return None

    def reduce_block(self, block: Block) -> Any:
        """With `reduces_blocks`: what this analysis keeps of one block (`Block`: its output,
        statistics and records), computed inside that block's hook; fixed-size, so nothing of
        T x D outlives the block."""
        raise NotImplementedError

    def update(self, variant: str, forward: Forward) -> None:
        """Add one forward pass of `variant` (default: the metric reads the `Forward`)."""
        if variant in self.metrics:
            self.metrics[variant].update(forward)

    def compute(self) -> dict[str, dict[str, Tensor]]:
        """Per variant, the computed state; then every state is reset for the next pass.
        A collective: every rank must call it."""
        computed = {name: metric.compute() for name, metric in self.metrics.items()}
        for metric in self.metrics.values():
            metric.reset()
        return computed

    def section(self, computed: dict[str, Tensor], decode: Callable[[int], str]) -> dict[str, Any]:
        """Its keys of one variant's results.json entry, from that variant's computed state
        (`decode` turns a token id into its text)."""
        return {}

    # The class methods below read results.json entries only, never metric states.
    # `change`, `columns`, `summary_columns` and `warnings` are called for every registered
    # analysis, on or off (when it is off its keys are null, so the tables keep their
    # columns); `publish` and `publish_run` only for the analyses that ran.
    @classmethod
    def change(cls, entry: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
        """Its keys of a variant's `change_vs_baseline`."""
        return {}

    def finish(self, module: Any, variants: dict[str, dict]) -> Any:
        """A top-level section of results.json (under `name`) computed after the pass, or None."""
        return None

    @classmethod
    def publish(cls, out: Publisher, model: str, name: str, entry: dict[str, Any]) -> None:
        """Publish one variant's keys: scalars, figures, tables."""

    @classmethod
    def publish_run(cls, out: Publisher, model: str, results: RunResults) -> None:
        """Publish what spans the run: comparisons of variants, its top-level section."""

    @classmethod
    def columns(cls, entry: dict[str, Any]) -> list[Column]:
        """Its cells of the terminal's end-of-run table for one variant."""
        return []

    @classmethod
    def summary_columns(cls, entry: dict[str, Any]) -> list[Column]:
        """Its cells of the summary table in TensorBoard's text tab for one variant."""
        return []

    @classmethod
    def warnings(cls, name: str, entry: dict[str, Any]) -> list[str]:
        """What a user must be told about this variant's numbers (overflow, cut-off lists)."""
        return []


def group_on(analyses: Any, group: str) -> bool:
    """Whether an options group is on: not null, and its ``enabled`` field (if any) true; a
    group no analysis declares options for is always on."""
    options = getattr(analyses, group, True)
    return options is not None and getattr(options, "enabled", True) is not False


class TokenCount(SumStatesMetric):
    """Tokens seen by a pass, summed over processes (for `timing.tokens_per_s`)."""

    tokens: Tensor  # () int64

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("tokens", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, input_ids: Tensor) -> None:
        self.tokens += input_ids.numel()

    def compute(self) -> Tensor:
        return self.tokens
