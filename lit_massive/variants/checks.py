"""Checks of the variant specs against the model (layer and head ranges, k, files), before
any forward pass; plain YAML forms and typed specs alike."""

from __future__ import annotations

import warnings
from dataclasses import asdict, is_dataclass
from typing import Any

import torch

from lit_massive.errors import InputError
from lit_massive.report.schema import load_massive, load_scores
from lit_massive.variants.specs import (
    BASELINE,
    EDITS,
    ORDERS,
    POSITIONS,
    SCORES,
    BlockEditSpec,
    Head,
    Select,
    SetMassive,
    SetRandom,
    Sweep,
    rank_heads,
    sweep_names,
)


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


def _check_layer(where: str, layer: Any, n_layer: int) -> int | list[int] | str:
    """An edit's `layer`: L, a non-empty list of blocks (sorted, each once) or ``all``."""
    valid = f"valid: 0..{n_layer - 1}, a list of them, or all"
    if layer == "all":
        return layer
    single = isinstance(layer, int) and not isinstance(layer, bool)
    many = isinstance(layer, list | tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in layer)
    if not (single or many) or (many and not layer):
        raise InputError(f"{where}={layer!r}: not a layer; {valid}")
    layers = [layer] if single else list(layer)
    bad = next((v for v in layers if not 0 <= v < n_layer), None)
    if bad is not None:
        raise InputError(f"{where}={layer!r}: layer {bad} out of range; {valid}")
    twice = sorted({v for v in layers if layers.count(v) > 1})
    if twice:
        warnings.warn(f"{where}={layer!r}: layers {twice} listed twice; each is edited once", stacklevel=4)
    return layer if single else sorted(set(layers))


def _check_edit(name: str, spec: dict, n_layer: int) -> BlockEditSpec:
    where = f"variant {name!r}"
    kind = "set_massive" if "set_massive" in spec else "set_random"
    edit = spec[kind]
    if kind == "set_massive":
        keys, to = {"layer", "to", "from", "positions"}, edit.get("to") if isinstance(edit, dict) else None
        if to not in EDITS:
            raise InputError(f"{where}: set_massive.to={to!r}; valid: {', '.join(EDITS)}")
    else:
        keys = {"layer", "seed", "positions"}
    if not isinstance(edit, dict) or set(edit) - keys or "layer" not in edit:
        raise InputError(f"{where}: {edit!r}; expected a mapping with keys {sorted(keys)}, layer required")
    layer = _check_layer(f"{where}: {kind}.layer", edit["layer"], n_layer)
    positions = edit.get("positions", "all")
    if positions not in POSITIONS:
        raise InputError(f"{where}: {kind}.positions={positions!r}; valid: {', '.join(POSITIONS)}")
    source = edit.get("from")
    if source is not None:
        load_massive(source)  # fail now on a missing file
    if kind == "set_massive":
        return SetMassive({"layer": layer, "to": to, "positions": positions, "from": source})
    return SetRandom({"layer": layer, "seed": int(edit.get("seed", 0)), "positions": positions})


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
                f"scores: path|null}}, or {{set_massive: {{layer: L|[L, ...]|all, to: zero|mean}}, prune_heads: [...]}}"
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
