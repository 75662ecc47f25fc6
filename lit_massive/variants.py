"""Variant specs: which heads each variant prunes and how it edits a block output.

The four forms users write under ``model.variants`` are typed here (``list[Head]``,
`Select`, `SetMassive`, `SetRandom`), so LightningCLI checks their shape and documents them
in ``--help``. `parse_variants` then checks their values against the model (layer and head
ranges, files), before any forward pass. An edit's hook lives on its spec.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, Union

import torch
from torch import Tensor

from lit_massive.errors import InputError
from lit_massive.functional import set_entries, zero_massive, zero_random
from lit_massive.results import variant_results

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:  # pragma: no cover
    from typing_extensions import NotRequired, TypedDict

BASELINE = "baseline"
ORDERS = ("top", "bottom")
# what a selection can rank heads by -> its results.json key
SCORES = {"first_token": "head_scores", "massive_tokens": "massive_token_scores"}
EDITS = ("zero", "mean")
Head = tuple[int, int]
BlockEdit = tuple[int, Callable[[Tensor], Tensor]]  # (layer, fn) as hooks.probes(edit=...) takes it
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


def check_heads(name: str, heads: Any, n_layer: int, n_head: int) -> list[Head]:
    """Validate a list of [layer, head] pairs; merge duplicates with a warning."""
    if not isinstance(heads, list | tuple):
        raise InputError(f"variant {name!r}: expected a list of [layer, head] pairs, got {heads!r}")
    out: list[Head] = []
    for pair in heads:
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(v, int) for v in pair)):
            raise InputError(f"variant {name!r}: {pair!r} is not a [layer, head] pair of integers")
        layer, head = pair
        if not 0 <= layer < n_layer:
            raise InputError(f"variant {name!r}: layer {layer} out of range; valid layers are 0..{n_layer - 1}")
        if not 0 <= head < n_head:
            raise InputError(f"variant {name!r}: head {head} out of range; valid heads are 0..{n_head - 1}")
        if (layer, head) in out:
            warnings.warn(f"variant {name!r}: head ({layer}, {head}) listed twice; pruned once", stacklevel=2)
            continue
        out.append((layer, head))
    return out


def _check_k(where: str, k: Any, n_total: int) -> int:
    if not isinstance(k, int) or not 1 <= k <= n_total:
        raise InputError(f"{where}: k={k!r} must be an integer in 1..{n_total} (the number of heads)")
    return k


def _check_order(where: str, order: Any, allowed: tuple[str, ...]) -> str:
    if order not in allowed:
        raise InputError(f"{where}: unknown order {order!r}; valid: {', '.join(allowed)}")
    return order


def _check_by(where: str, by: Any) -> str:
    if by not in SCORES:
        raise InputError(f"{where}: by={by!r}; valid: {', '.join(SCORES)}")
    return by


def load_scores(path: str, variant: str = BASELINE, by: str = "first_token") -> Tensor:
    """Head scores (L, H) of `variant` from a results.json: first-token (`head_scores`) or
    massive-token (`massive_token_scores`) ones."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"scores file {path!r} does not exist; give a results.json of a run with head_scores")
    data = json.loads(file.read_text())
    key = SCORES[by]
    scores = data.get("variants", {}).get(variant, {}).get(key)
    if scores is None:
        raise InputError(f"{path}: variant {variant!r} has no {key}; run it with model.head_scores: true")
    return torch.tensor([[float("nan") if v is None else v for v in row] for row in scores], dtype=torch.float64)


def load_massive(path: str, variant: str = BASELINE) -> list[dict]:
    """The located massive activations of `variant` from a results.json."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"set_massive.from {path!r} does not exist; give a results.json of an earlier run")
    found = json.loads(file.read_text()).get("variants", {}).get(variant, {}).get("massive")
    if found is None:
        raise InputError(f"{path}: variant {variant!r} has no 'massive' locator entries")
    return found


def rank_heads(scores: Tensor, order: str) -> list[Head]:
    """All heads by score, highest first for `top`, lowest first for `bottom`;
    ties keep (layer, head) order."""
    n_head = scores.shape[1]
    flat = scores.flatten()
    index = torch.argsort(-flat if order == "top" else flat, stable=True)
    return [(int(i) // n_head, int(i) % n_head) for i in index]


def _check_edit(name: str, spec: dict, n_layer: int) -> BlockEditSpec:
    where = f"variant {name!r}"
    if "set_massive" in spec:
        edit = spec["set_massive"]
        keys, to = {"layer", "to", "from"}, edit.get("to") if isinstance(edit, dict) else None
        if to not in EDITS:
            raise InputError(f"{where}: set_massive.to={to!r}; valid: {', '.join(EDITS)}")
    else:
        edit, keys = spec["set_random"], {"layer", "seed"}
    if not isinstance(edit, dict) or set(edit) - keys or "layer" not in edit:
        raise InputError(f"{where}: {edit!r}; expected a mapping with keys {sorted(keys)}, layer required")
    layer = edit["layer"]
    if not isinstance(layer, int) or not 0 <= layer < n_layer:
        raise InputError(f"{where}: layer {layer!r} out of range; valid layers are 0..{n_layer - 1}")
    source = edit.get("from")
    if source is not None:
        load_massive(source)  # fail now on a missing file
    if "set_massive" in spec:
        return SetMassive({"layer": layer, "to": to, "from": source})
    return SetRandom({"layer": layer, "seed": int(edit.get("seed", 0))})


def _check_spec(name: str, spec: Any, n_layer: int, n_head: int) -> tuple[list[Head] | Select, BlockEditSpec | None]:
    """One variant, typed (from LightningCLI) or as plain YAML: its heads (or the `Select`
    to resolve against scores) and its block edit, checked against the model."""
    if is_dataclass(spec):
        spec = asdict(spec)
    if isinstance(spec, dict) and ({"set_massive", "set_random", "prune_heads"} & set(spec)):
        unknown = set(spec) - {"set_massive", "set_random", "prune_heads"}
        if unknown or ("set_massive" in spec and "set_random" in spec):
            raise InputError(
                f"variant {name!r}: {spec!r}; expected set_massive or set_random, optionally with prune_heads"
            )
        edit = _check_edit(name, spec, n_layer) if "set_massive" in spec or "set_random" in spec else None
        heads = check_heads(name, spec.get("prune_heads", []), n_layer, n_head)
        if edit is not None:
            edit.prune_heads = heads
        return heads, edit
    if isinstance(spec, dict):
        unknown = set(spec) - {"select", "k", "scores", "by"}
        if unknown or "select" not in spec or "k" not in spec:
            raise InputError(
                f"variant {name!r}: {spec!r}; expected a head list, {{select: top|bottom, k: N, "
                f"scores: path|null}}, or {{set_massive: {{layer: L, to: zero|mean}}, prune_heads: [...]}}"
            )
        order = _check_order(f"variant {name!r}", spec["select"], ORDERS)
        k = _check_k(f"variant {name!r}", spec["k"], n_layer * n_head)
        by = _check_by(f"variant {name!r}", spec.get("by", "first_token"))
        if spec.get("scores") is not None:
            load_scores(spec["scores"], by=by)  # fail now on a missing file
        return Select(order, k, spec.get("scores"), by), None
    return check_heads(name, spec, n_layer, n_head), None


def _sweep_specs(sweep: Sweep, n_layer: int, n_head: int) -> dict[str, list[Head] | Select]:
    n_total = n_layer * n_head
    order = _check_order("sweep", sweep.order, (*ORDERS, "random"))
    ks = [_check_k("sweep", k, n_total) for k in sweep.k]
    if order == "random":
        gen = torch.Generator().manual_seed(sweep.seed)
        perm = torch.randperm(n_total, generator=gen).tolist()
        ranking = [(i // n_head, i % n_head) for i in perm]
    elif sweep.scores is not None:
        ranking = rank_heads(load_scores(sweep.scores, by=_check_by("sweep", sweep.by)), order)
    return {
        name: Select(order, k, by=_check_by("sweep", sweep.by))
        if order != "random" and sweep.scores is None
        else ranking[:k]
        for name, k in zip(sweep_names(sweep), ks, strict=True)
    }


def parse_variants(
    variants: dict[str, Any] | None, sweep: Sweep | None, n_layer: int, n_head: int
) -> tuple[dict[str, list[Head] | Select], dict[str, BlockEditSpec]]:
    """Each variant's heads (or a `Select` to resolve against scores), and its edit of a
    block output, if any. Accepts the typed specs and their plain YAML forms alike."""
    specs: dict[str, list[Head] | Select] = {}
    edits: dict[str, BlockEditSpec] = {}
    for name, spec in (variants or {}).items():
        if name == BASELINE:
            raise InputError(f"variant name {BASELINE!r} is reserved for the unpruned model; rename it")
        specs[name], edit = _check_spec(name, spec, n_layer, n_head)
        if edit is not None:
            edits[name] = edit
    if sweep is not None:
        specs.update(_sweep_specs(sweep, n_layer, n_head))
    return specs, edits


def resolve(
    specs: dict[str, list[Head] | Select], run_scores: dict[str, Tensor] | None
) -> dict[str, list[Head] | None]:
    """Heads per variant; None where the selection waits for this run's scores (`by` ->
    (L, H))."""
    out: dict[str, list[Head] | None] = {}
    for name, spec in specs.items():
        if not isinstance(spec, Select):
            out[name] = spec
        elif spec.scores is not None:
            out[name] = rank_heads(load_scores(spec.scores, by=spec.by), spec.select)[: spec.k]
        else:
            out[name] = None if run_scores is None else rank_heads(run_scores[spec.by], spec.select)[: spec.k]
    return out


def head_mask(heads: list[Head], n_layer: int, n_head: int) -> Tensor:
    """(L, H) ones with zeros at the pruned heads."""
    mask = torch.ones(n_layer, n_head)
    for layer, head in heads:
        mask[layer, head] = 0.0
    return mask


class VariantPlan:
    """Every variant of a run, baseline first: the heads each prunes (once its selection is
    resolved) and the block edit it applies (once its `mean` values are located)."""

    def __init__(self, variants: dict[str, Any] | None, sweep: Sweep | None, n_layer: int, n_head: int) -> None:
        self.n_layer, self.n_head = n_layer, n_head
        self.specs, self.edits = parse_variants(variants, sweep, n_layer, n_head)
        self.names = [BASELINE, *self.specs]
        self.pruned_heads: dict[str, list[Head] | None] = {BASELINE: [], **resolve(self.specs, run_scores=None)}
        self.means: dict[str, MeanEntries] = {}

    @property
    def needs_run_scores(self) -> bool:
        """Some selection ranks heads by this run's own baseline scores."""
        return any(isinstance(s, Select) and s.scores is None for s in self.specs.values())

    @property
    def needs_locator(self) -> bool:
        """Some `mean` edit takes its values from this run's own baseline locator."""
        return any(isinstance(e, SetMassive) and e.to == "mean" and e.source is None for e in self.edits.values())

    def use_run_scores(self, scores: dict[str, Tensor]) -> None:
        """Resolve the selections that waited for this run's baseline head scores: `by`
        (first_token, massive_tokens) -> (L, H)."""
        self.pruned_heads.update(resolve(self.specs, run_scores=scores))

    def use_located(self, located: list[dict] | None, device: torch.device) -> None:
        """Give every `mean` edit its entries: from its results.json, else from `located`."""
        for name, edit in self.edits.items():
            if isinstance(edit, SetMassive) and edit.to == "mean":
                entries = load_massive(edit.source) if edit.source is not None else located
                at = [e for e in entries if e["layer"] == edit.layer]
                if not at:
                    warnings.warn(f"variant {name!r}: {self._nothing_located(edit)}", stacklevel=2)
                self.means[name] = MeanEntries(
                    torch.tensor([e["position"] for e in at], dtype=torch.long, device=device),
                    torch.tensor([e["dim"] for e in at], dtype=torch.long, device=device),
                    torch.tensor([e["value"] for e in at], dtype=torch.float32, device=device),
                )

    @staticmethod
    def _nothing_located(edit: SetMassive) -> str:
        where = edit.source or "this run's baseline"
        return (
            f"nothing massive is located at block {edit.layer} in {where}, so its mean edit sets "
            f"nothing and changes nothing (lower model.massive_threshold / massive_ratio to edit smaller values)"
        )

    def _record(self, name: str, edit: BlockEditSpec) -> Edit:
        """What results.json says the edit did."""
        record = edit.record()
        if name not in self.means:
            return record
        n = len(self.means[name].positions)
        return replace(record, entries=n, note=None if n else self._nothing_located(edit))

    def head_masks(self) -> Tensor:
        """(V, L, H): zeros at each variant's pruned heads; ones while its heads are unknown."""
        masks = torch.ones(len(self.names), self.n_layer, self.n_head)
        for v, name in enumerate(self.names):
            if self.pruned_heads[name] is not None:
                masks[v] = head_mask(self.pruned_heads[name], self.n_layer, self.n_head)
        return masks

    def results(self, computed: dict[str, dict[str, Any]], decode: Callable[[int], str]) -> dict[str, dict]:
        """Each variant's results.json entry from its computed metrics, baseline first (the
        others' changes are against it)."""
        variants: dict[str, dict] = {}
        for name in self.names:
            edit = self.edits.get(name)
            entry = {**computed[name], "pruned_heads": self.pruned_heads[name]}
            entry["edit"] = None if edit is None else self._record(name, edit)
            variants[name] = variant_results(entry, decode, baseline=variants.get(BASELINE))
        return variants

    def block_edit(self, name: str, windows: Sequence[int], threshold: float, ratio: float) -> BlockEdit | None:
        """Variant `name`'s edit for a batch of windows (their dataset indices), or None."""
        edit = self.edits.get(name)
        if edit is None:
            return None
        return edit.block_edit(threshold, ratio, windows, self.means.get(name))
