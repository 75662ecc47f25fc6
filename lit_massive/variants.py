"""Which heads each variant prunes: explicit lists, selections by head score, sweeps.

Everything is checked when the module is built, before any forward pass.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lit_massive.errors import InputError

BASELINE = "baseline"
ORDERS = ("top", "bottom")
Head = tuple[int, int]


@dataclass(frozen=True)
class Selection:
    """The first `k` heads of a score ranking; `scores` None means this run's baseline."""

    order: str
    k: int
    scores: str | None = None


@dataclass(frozen=True)
class Edit:
    """Set entries of block `layer`'s output: `zero` the massive ones, give the located
    (dim, position) entries their `mean` value (from `source`, a results.json, or this run's
    first pass), or zero as many `random` non-massive entries (the control)."""

    layer: int
    to: str
    source: str | None = None
    seed: int = 0


EDITS = ("zero", "mean")


@dataclass
class Sweep:
    """Cumulative pruning: one variant per k, pruning the first k heads of `order`."""

    order: str = "top"
    k: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    seed: int = 0  # for order: random
    scores: str | None = None  # results.json to rank by; null: this run's baseline scores


def sweep_names(sweep: Sweep | None) -> dict[str, int]:
    """Variant name -> k for a sweep."""
    return {} if sweep is None else {f"sweep_{sweep.order}_{k}": k for k in sweep.k}


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


def load_scores(path: str, variant: str = BASELINE) -> Tensor:
    """Head scores (L, H) of `variant` from a results.json."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"scores file {path!r} does not exist; give a results.json of a run with head_scores")
    data = json.loads(file.read_text())
    scores = data.get("variants", {}).get(variant, {}).get("head_scores")
    if scores is None:
        raise InputError(f"{path}: variant {variant!r} has no head_scores; run it with model.head_scores: true")
    return torch.tensor([[float("nan") if v is None else v for v in row] for row in scores], dtype=torch.float64)


def rank_heads(scores: Tensor, order: str) -> list[Head]:
    """All heads by score, highest first for `top`, lowest first for `bottom`;
    ties keep (layer, head) order."""
    n_head = scores.shape[1]
    flat = scores.flatten()
    index = torch.argsort(-flat if order == "top" else flat, stable=True)
    return [(int(i) // n_head, int(i) % n_head) for i in index]


def _check_edit(name: str, spec: dict, n_layer: int) -> Edit:
    where = f"variant {name!r}"
    if "set_massive" in spec:
        edit = spec["set_massive"]
        keys, to = {"layer", "to", "from"}, edit.get("to") if isinstance(edit, dict) else None
        if to not in EDITS:
            raise InputError(f"{where}: set_massive.to={to!r}; valid: {', '.join(EDITS)}")
    else:
        edit, keys, to = spec["set_random"], {"layer", "seed"}, "random"
    if not isinstance(edit, dict) or set(edit) - keys or "layer" not in edit:
        raise InputError(f"{where}: {edit!r}; expected a mapping with keys {sorted(keys)}, layer required")
    layer = edit["layer"]
    if not isinstance(layer, int) or not 0 <= layer < n_layer:
        raise InputError(f"{where}: layer {layer!r} out of range; valid layers are 0..{n_layer - 1}")
    source = edit.get("from")
    if source is not None:
        load_massive(source)  # fail now on a missing file
    return Edit(layer, to, source, int(edit.get("seed", 0)))


def load_massive(path: str, variant: str = BASELINE) -> list[dict]:
    """The located massive activations of `variant` from a results.json."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"set_massive.from {path!r} does not exist; give a results.json of an earlier run")
    found = json.loads(file.read_text()).get("variants", {}).get(variant, {}).get("massive")
    if found is None:
        raise InputError(f"{path}: variant {variant!r} has no 'massive' locator entries")
    return found


def parse_variants(
    variants: dict[str, Any] | None, sweep: Sweep | None, n_layer: int, n_head: int
) -> tuple[dict[str, list[Head] | Selection], dict[str, Edit]]:
    """Each variant's heads (or a `Selection` to resolve against scores), and its edit of a
    block output, if any."""
    n_total = n_layer * n_head
    specs: dict[str, list[Head] | Selection] = {}
    edits: dict[str, Edit] = {}
    for name, spec in (variants or {}).items():
        if name == BASELINE:
            raise InputError(f"variant name {BASELINE!r} is reserved for the unpruned model; rename it")
        if isinstance(spec, dict) and ({"set_massive", "set_random", "prune_heads"} & set(spec)):
            unknown = set(spec) - {"set_massive", "set_random", "prune_heads"}
            if unknown or ("set_massive" in spec and "set_random" in spec):
                raise InputError(
                    f"variant {name!r}: {spec!r}; expected set_massive or set_random, optionally with prune_heads"
                )
            if "set_massive" in spec or "set_random" in spec:
                edits[name] = _check_edit(name, spec, n_layer)
            specs[name] = check_heads(name, spec.get("prune_heads", []), n_layer, n_head)
        elif isinstance(spec, dict):
            unknown = set(spec) - {"select", "k", "scores"}
            if unknown or "select" not in spec or "k" not in spec:
                raise InputError(
                    f"variant {name!r}: {spec!r}; expected a head list, {{select: top|bottom, k: N, "
                    f"scores: path|null}}, or {{set_massive: {{layer: L, to: zero|mean}}, prune_heads: [...]}}"
                )
            order = _check_order(f"variant {name!r}", spec["select"], ORDERS)
            k = _check_k(f"variant {name!r}", spec["k"], n_total)
            if spec.get("scores") is not None:
                load_scores(spec["scores"])  # fail now on a missing file
            specs[name] = Selection(order, k, spec.get("scores"))
        else:
            specs[name] = check_heads(name, spec, n_layer, n_head)
    if sweep is not None:
        order = _check_order("sweep", sweep.order, (*ORDERS, "random"))
        ks = [_check_k("sweep", k, n_total) for k in sweep.k]
        if order == "random":
            gen = torch.Generator().manual_seed(sweep.seed)
            perm = torch.randperm(n_total, generator=gen).tolist()
            ranking = [(i // n_head, i % n_head) for i in perm]
        elif sweep.scores is not None:
            ranking = rank_heads(load_scores(sweep.scores), order)
        for name, k in zip(sweep_names(sweep), ks, strict=True):
            specs[name] = Selection(order, k) if order != "random" and sweep.scores is None else ranking[:k]
    return specs, edits


def needs_run_scores(specs: dict[str, list[Head] | Selection]) -> bool:
    return any(isinstance(s, Selection) and s.scores is None for s in specs.values())


def resolve(specs: dict[str, list[Head] | Selection], run_scores: Tensor | None) -> dict[str, list[Head] | None]:
    """Heads per variant; None where the selection waits for this run's scores."""
    out: dict[str, list[Head] | None] = {}
    for name, spec in specs.items():
        if not isinstance(spec, Selection):
            out[name] = spec
        elif spec.scores is not None:
            out[name] = rank_heads(load_scores(spec.scores), spec.order)[: spec.k]
        else:
            out[name] = None if run_scores is None else rank_heads(run_scores, spec.order)[: spec.k]
    return out


def head_mask(heads: list[Head], n_layer: int, n_head: int) -> Tensor:
    """(L, H) ones with zeros at the pruned heads."""
    mask = torch.ones(n_layer, n_head)
    for layer, head in heads:
        mask[layer, head] = 0.0
    return mask
