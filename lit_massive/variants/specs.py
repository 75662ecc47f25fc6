"""Variant specs: which heads each variant prunes and how it edits a block output.

The forms users write under ``model.variants`` are typed here (``list[Head]``, `Select`,
`PruneHeads`, `SetMassive`, `SetRandom`), so LightningCLI checks their shape and documents
them in ``--help``; `checks.parse_variants` then checks their values against the model.
An edit's hook lives on its spec.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Union

from torch import Tensor

from lit_massive.errors import InputError
from lit_massive.probes.hooks import BlockEdit
from lit_massive.results import ranking

# the baseline's name, the orders and what a selection ranks heads by (-> results.json key),
# defined with results.json's names and the ranking, which import no torch
from lit_massive.results.names import BASELINE, SCORES  # noqa: F401
from lit_massive.results.ranking import ORDERS  # noqa: F401
from lit_massive.variants.edits import POSITIONS, GroupMeans, set_to_means, zero_massive, zero_random  # noqa: F401

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:  # pragma: no cover
    from typing_extensions import NotRequired, TypedDict

EDITS = ("zero", "mean")
Head = tuple[int, int]
# which blocks an edit takes: L, [L, ...] or "all"
LayerChoice = Union[int, list[int], str]  # noqa: UP007
# the control's per-window seed is seed * SEED_STRIDE + window index: distinct seeds for
# distinct (seed, window) pairs while a run has fewer windows than this prime
SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class Edit:
    """What a variant did to block outputs, as results.json records it.

    `layer` is the variant's choice as written: L (one block, an int as it always was), a
    list of blocks or ``all``; `layers` the blocks edited, in order. `positions`: ``all``,
    ``first`` (position 0 of each window, BOS when there is one) or ``rest`` (every other).
    `to` is `zero`, `mean` (each entry massive in its window set to the mean value of its
    dim, first position and the rest apart, from `source`, a results.json, or this run's
    first pass) or `random` (the control, drawn with `seed`). `entries`: for `mean`, how
    many (dim, first|rest) means it has over its blocks; 0, and `note` says it changed
    nothing. `blocks`, per edited block once the pass ran: `edited`, the entries it changed,
    summed over windows; for `mean` also `means`, its (dim, group) means there, and
    `unmatched`, the massive entries it left as they were because their group has no mean."""

    layer: int | list[int] | str
    to: str
    source: str | None = None
    seed: int = 0
    entries: int | None = None  # `mean`: how many (dim, first|rest) means it has
    note: str | None = None  # why the edit changed nothing, when it did
    layers: list[int] = field(default_factory=list)
    positions: str = "all"
    blocks: list[dict[str, int | None]] | None = None  # {layer, edited, means, unmatched} per edited block


def edited_layers(layer: int | Sequence[int] | str, n_layer: int) -> list[int]:
    """The blocks a checked `layer` choice names, in order."""
    if layer == "all":
        return list(range(n_layer))
    return [layer] if isinstance(layer, int) else sorted(set(layer))


def _at(counts: Tensor | None, layer: int) -> Tensor | None:
    """Block `layer`'s (2,) view of a variant's (2, L) counts (`edits.EDITED`, `UNMATCHED`)."""
    return None if counts is None else counts[:, layer]


@dataclass
class Select:
    """Prune the first `k` heads of a ranking by a per-head figure: ``select: top`` (highest
    first) or ``bottom``; ``by: first_token`` (attention on token 0), ``massive_tokens``
    (attention on the window's massive tokens) or any per-head figure of the attention
    internals (``head_output_norm`` with ``bottom``: the dormant heads; `SCORES` lists them);
    `scores`: a results.json to rank by, null: this run's baseline (from a first pass over
    the same windows)."""

    select: str
    k: int
    scores: str | None = None
    by: str = "first_token"


# a mapping, not a dataclass: its YAML key `from` is a Python keyword
SetMassiveArgs = TypedDict(
    "SetMassiveArgs",
    {"layer": LayerChoice, "to": str, "positions": NotRequired[str], "from": NotRequired[Union[str, None]]},  # noqa: UP007
)


class SetRandomArgs(TypedDict):
    layer: LayerChoice
    seed: NotRequired[int]
    positions: NotRequired[str]


@dataclass
class SetMassive:
    """Set the massive entries of the output of block ``layer`` (L, a list of blocks, or
    ``all``) at ``positions`` (``all``, ``first``: position 0, BOS when there is one, or
    ``rest``) ``to: zero``, or ``to: mean``: each entry massive in its own window gets the
    mean value of its dim over the windows where it is massive, position 0 and the rest
    apart, from ``from: results.json`` or (null) this run's first pass; optionally with
    `prune_heads`."""

    set_massive: SetMassiveArgs
    prune_heads: list[Head] = field(default_factory=list)

    @property
    def layer(self) -> int | list[int] | str:
        return self.set_massive["layer"]

    @property
    def to(self) -> str:
        return self.set_massive["to"]

    @property
    def source(self) -> str | None:
        return self.set_massive.get("from")

    @property
    def positions(self) -> str:
        return self.set_massive.get("positions", "all")

    def record(self, n_layer: int) -> Edit:
        layers = edited_layers(self.layer, n_layer)
        return Edit(self.layer, self.to, self.source, layers=layers, positions=self.positions)

    def block_edits(
        self,
        n_layer: int,
        threshold: float,
        ratio: float,
        windows: Sequence[int],
        means: dict[int, GroupMeans] | None = None,
        counts: Tensor | None = None,
    ) -> list[BlockEdit]:
        """One (layer, fn) per edited block, for probes(); what each changes is added to
        `counts` (2, L) on the device. `to: mean` needs `means` for every edited block."""
        criterion = {"threshold": threshold, "ratio": ratio, "positions": self.positions}
        layers = edited_layers(self.layer, n_layer)
        if self.to == "zero":
            return [(i, partial(zero_massive, **criterion, counts=_at(counts, i))) for i in layers]
        return [(i, partial(set_to_means, **criterion, means=means[i], counts=_at(counts, i))) for i in layers]


@dataclass
class SetRandom:
    """The control for `SetMassive`: zero as many randomly chosen non-massive entries of the
    output of block ``layer`` (L, a list, or ``all``) per window, among the same
    ``positions`` (``all``, ``first`` or ``rest``), drawn with ``seed``; optionally with
    `prune_heads`."""

    set_random: SetRandomArgs
    prune_heads: list[Head] = field(default_factory=list)

    @property
    def layer(self) -> int | list[int] | str:
        return self.set_random["layer"]

    @property
    def seed(self) -> int:
        return self.set_random.get("seed", 0)

    @property
    def positions(self) -> str:
        return self.set_random.get("positions", "all")

    def record(self, n_layer: int) -> Edit:
        return Edit(
            self.layer, "random", None, self.seed, layers=edited_layers(self.layer, n_layer), positions=self.positions
        )

    def block_edits(
        self,
        n_layer: int,
        threshold: float,
        ratio: float,
        windows: Sequence[int],
        means: dict[int, GroupMeans] | None = None,
        counts: Tensor | None = None,
    ) -> list[BlockEdit]:
        """One (layer, fn) per edited block for one batch: one generator per window, seeded by
        the window's index, so any number of processes draws the same entries. Every block
        gets the same seeds, so the order of the random keys is the same at each block: like
        the massive entries it stands in for, what the control zeroes tends to sit at the same
        (position, dim) from block to block (and ``layer: [L]`` draws what ``layer: L`` does)."""
        seeds = [self.seed * SEED_STRIDE + int(i) for i in windows]  # host ints (the data module keeps them)
        criterion = {"threshold": threshold, "ratio": ratio, "seeds": seeds, "positions": self.positions}
        layers = edited_layers(self.layer, n_layer)
        return [(i, partial(zero_random, **criterion, counts=_at(counts, i))) for i in layers]


@dataclass
class PruneHeads:
    """``{prune_heads: [[layer, head], ...]}``: the edit forms' mapping without an edit,
    the same as the plain list."""

    prune_heads: list[Head]


Weight = tuple[int, int, int]  # (layer, row j, col i): W[j, i] of that block's MLP output projection
Shape = tuple[int, int]  # (rows, cols) of a block's W[j, i]: output channels, input channels
SUPER = "super"  # `zero_weights: super`: this run's own super-weight candidates


class ZeroRandomWeightsArgs(TypedDict):
    layer: int
    count: int
    seed: NotRequired[int]


@dataclass
class ZeroWeights:
    """Zero scalars W[j, i] of MLP output projections for this variant only (super weights,
    Yu et al., arXiv 2411.07191): ``zero_weights: [[layer, row, col], ...]``, or ``super``:
    this run's own candidates (the baseline's ``super_weights``, from a first pass over the
    same windows); optionally with `prune_heads`. The weights are restored after each pass."""

    zero_weights: Union[list[Weight], str]  # noqa: UP007
    prune_heads: list[Head] = field(default_factory=list)


@dataclass
class ZeroRandomWeights:
    """The control for `ZeroWeights`: zero ``count`` weights of block ``layer``'s MLP output
    projection, drawn uniformly without replacement with ``seed`` (0 by default); optionally
    with `prune_heads`."""

    zero_random_weights: ZeroRandomWeightsArgs
    prune_heads: list[Head] = field(default_factory=list)


QKDim = tuple[int, int, int]  # (layer, query head, dim) of q and k as the attention function receives them
MASSIVE = "massive"  # `zero_qk_dims: {dims: massive}`: this run's own massive q/k dims


class ZeroQKDimsArgs(TypedDict):
    dims: Union[str, list[QKDim]]  # noqa: UP007
    layers: NotRequired[LayerChoice]


class ZeroRandomQKDimsArgs(TypedDict):
    layers: NotRequired[LayerChoice]
    seed: NotRequired[int]


@dataclass
class ZeroQKDims:
    """Zero dims of the queries and keys inside the attention call, after RoPE (Jin et al.,
    arXiv 2502.01563): ``zero_qk_dims: {dims: massive, layers: all | [..]}`` (this run's own
    massive q and k dims, from a first pass: each head's dims massive in at least half of the
    windows) or ``{dims: [[layer, head, dim], ...]}`` (that dim of query head `head` and of
    the key head it reads); optionally with `prune_heads`."""

    zero_qk_dims: ZeroQKDimsArgs
    prune_heads: list[Head] = field(default_factory=list)


@dataclass
class ZeroRandomQKDims:
    """The control for `ZeroQKDims` with ``dims: massive``: in every head of ``layers`` (all
    by default), as many randomly drawn non-massive dims of q and of k as that head has
    massive ones, drawn with ``seed``; optionally with `prune_heads`."""

    zero_random_qk_dims: ZeroRandomQKDimsArgs
    prune_heads: list[Head] = field(default_factory=list)


class ActivationQuant(TypedDict):
    bits: int
    per: NotRequired[str]  # tensor | token


class WeightQuant(TypedDict):
    bits: int
    group: NotRequired[Union[int, str]]  # noqa: UP007  N input columns | channel


class QuantizeArgs(TypedDict):
    activations: NotRequired[ActivationQuant]
    weights: NotRequired[WeightQuant]
    layers: NotRequired[LayerChoice]
    keep: NotRequired[str]  # none | massive_tokens | super_weights


@dataclass
class Quantize:
    """Fake-quantize the chosen blocks (``layers``: all by default) for this variant only:
    ``activations: {bits: B, per: tensor | token}`` rounds every linear layer's input (symmetric
    round-to-nearest, one scale per window or per token), ``weights: {bits: B, group: N |
    channel}`` every linear weight (one scale per output channel or per group of N input
    columns); ``keep: massive_tokens`` leaves the tokens massive in the stream entering the
    block at full precision (the scale is taken over the rest), ``keep: super_weights`` this
    run's super-weight candidates (from a first pass; out of their group's scale);
    optionally with `prune_heads`."""

    quantize: QuantizeArgs
    prune_heads: list[Head] = field(default_factory=list)


VariantSpec = Union[  # noqa: UP007
    list[Head],
    Select,
    PruneHeads,
    SetMassive,
    SetRandom,
    ZeroWeights,
    ZeroRandomWeights,
    ZeroQKDims,
    ZeroRandomQKDims,
    Quantize,
]
# each mapping form's key -> an example, named in a one-line error when a form lacks a key
# (`select needs k: {select: top, k: 3}`) or has one no form knows
FORM_EXAMPLES = {
    "select": "{select: top, k: 3}",
    "prune_heads": "{prune_heads: [[5, 1], [8, 3]]}",
    "set_massive": "{set_massive: {layer: 2, to: zero}}",
    "set_random": "{set_random: {layer: 2, seed: 0}}",
    "zero_weights": "{zero_weights: [[2, 17, 0]]} or {zero_weights: super}",
    "zero_random_weights": "{zero_random_weights: {layer: 2, count: 100, seed: 0}}",
    "zero_qk_dims": "{zero_qk_dims: {dims: massive, layers: all}} or {zero_qk_dims: {dims: [[5, 1, 7]]}}",
    "zero_random_qk_dims": "{zero_random_qk_dims: {layers: all, seed: 0}}",
    "quantize": "{quantize: {activations: {bits: 8, per: tensor}, weights: {bits: 4, group: 128}, keep: none}}",
}
BlockEditSpec = Union[SetMassive, SetRandom]  # noqa: UP007
WeightEditSpec = Union[ZeroWeights, ZeroRandomWeights]  # noqa: UP007
QKEditSpec = Union[ZeroQKDims, ZeroRandomQKDims]  # noqa: UP007


@dataclass
class Sweep:
    """Cumulative pruning: one variant per k, pruning the first k heads of `order`."""

    order: str = "top"
    k: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    seed: int = 0  # for order: random
    scores: str | None = None  # results.json to rank by; null: this run's baseline scores
    by: str = "first_token"  # or any name in SCORES: which per-head figure ranks the heads


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
    (`results.ranking.rank_heads`)."""
    return ranking.rank_heads(scores.tolist() if hasattr(scores, "tolist") else scores, order)


def as_sweep(value: Sweep | Mapping[str, Any] | None) -> Sweep | None:
    """`model.sweep` as a `Sweep` (LightningCLI gives one; a Python caller may give a dict)."""
    if value is None or isinstance(value, Sweep):
        return value
    fields = list(Sweep.__dataclass_fields__)
    if not isinstance(value, Mapping):
        raise InputError(f"sweep={value!r}: give a mapping with {', '.join(fields)}")
    unknown = [key for key in value if key not in fields]
    if unknown:
        raise InputError(f"sweep: no option {unknown[0]!r}; valid: {', '.join(fields)}")
    return Sweep(**{key: tuple(v) if key == "k" and isinstance(v, list) else v for key, v in value.items()})
