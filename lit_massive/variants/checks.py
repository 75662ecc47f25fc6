"""Checks of the variant specs against the model (layer and head ranges, k, files), before
any forward pass; plain YAML forms and typed specs alike."""

from __future__ import annotations

import warnings
from dataclasses import asdict, is_dataclass
from typing import Any

import torch

from lit_massive.errors import InputError, RunWarning
from lit_massive.results.schema import load_massive, load_scores
from lit_massive.variants.qk_dims import AttentionShape, check_qk
from lit_massive.variants.quantize import check_quantize
from lit_massive.variants.specs import (
    BASELINE,
    EDITS,
    ORDERS,
    POSITIONS,
    SCORES,
    SUPER,
    BlockEditSpec,
    Head,
    QKEditSpec,
    Select,
    SetMassive,
    SetRandom,
    Shape,
    Sweep,
    WeightEditSpec,
    ZeroRandomWeights,
    ZeroWeights,
    rank_heads,
    sweep_names,
)

EDIT_FORMS = (
    "set_massive",
    "set_random",
    "zero_weights",
    "zero_random_weights",
    "zero_qk_dims",
    "zero_random_qk_dims",
    "quantize",
)

# the tag groups that span a run (its TensorBoard run itself holds them): no variant is named so
RUN_TAGS = frozenset({"compare", "sweep", "summary", "feature_view", "run", "variants"})


def _int(value: Any) -> bool:
    """An integer, not a bool (YAML's true/false are ints to Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


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
            message = f"variant {name!r}: head ({layer}, {head}) listed twice; pruned once"
            warnings.warn(message, RunWarning, stacklevel=2)
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
    single = _int(layer)
    many = isinstance(layer, list | tuple) and all(_int(v) for v in layer)
    if not (single or many) or (many and not layer):
        raise InputError(f"{where}={layer!r}: not a layer; {valid}")
    layers = [layer] if single else list(layer)
    bad = next((v for v in layers if not 0 <= v < n_layer), None)
    if bad is not None:
        raise InputError(f"{where}={layer!r}: layer {bad} out of range; {valid}")
    twice = sorted({v for v in layers if layers.count(v) > 1})
    if twice:
        warnings.warn(f"{where}={layer!r}: layers {twice} listed twice; each is edited once", RunWarning, stacklevel=4)
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


def _check_weight(where: str, weight: Any, shapes: list[Shape]) -> tuple[int, int, int]:
    """One [layer, row, col] of `zero_weights`, inside that block's (rows, cols)."""
    if not (isinstance(weight, list | tuple) and len(weight) == 3 and all(_int(v) for v in weight)):
        raise InputError(f"{where}: {weight!r} is not a [layer, row, col] triple of integers")
    layer, row, col = weight
    if not 0 <= layer < len(shapes):
        raise InputError(f"{where}: {list(weight)}: layer {layer} out of range; valid layers are 0..{len(shapes) - 1}")
    rows, cols = shapes[layer]
    if not (0 <= row < rows and 0 <= col < cols):
        raise InputError(
            f"{where}: {list(weight)}: block {layer}'s MLP output projection W[row, col] has rows 0..{rows - 1} "
            f"(output channels) and cols 0..{cols - 1} (input channels)"
        )
    return layer, row, col


def _check_weights(name: str, spec: dict, shapes: list[Shape] | None) -> WeightEditSpec:
    """`zero_weights: [[layer, row, col], ...] | super` or `zero_random_weights: {layer, count, seed}`."""
    where = f"variant {name!r}"
    kind = "zero_weights" if "zero_weights" in spec else "zero_random_weights"
    if shapes is None:
        raise InputError(
            f"{where}: {kind} needs each block's MLP output projection as one module; this model has none "
            f"(a mixture of experts with fused expert weights, as Mixtral)"
        )
    value = spec[kind]
    if kind == "zero_weights":
        if value == SUPER:
            return ZeroWeights(SUPER)
        if not isinstance(value, list | tuple) or not value:
            raise InputError(f"{where}: zero_weights={value!r}; valid: [[layer, row, col], ...] or {SUPER}")
        weights = [_check_weight(f"{where}: zero_weights", w, shapes) for w in value]
        twice = sorted({w for w in weights if weights.count(w) > 1})
        if twice:
            message = f"{where}: weights {[list(w) for w in twice]} listed twice; each is zeroed once"
            warnings.warn(message, RunWarning, stacklevel=4)
        return ZeroWeights([list(w) for w in dict.fromkeys(weights)])
    keys = {"layer", "count", "seed"}
    if not isinstance(value, dict) or set(value) - keys or not {"layer", "count"} <= set(value):
        raise InputError(
            f"{where}: zero_random_weights={value!r}; expected {{layer: L, count: N, seed: S}} (seed optional)"
        )
    layer, count, seed = value["layer"], value["count"], value.get("seed", 0)
    if not _int(layer) or not 0 <= layer < len(shapes):
        raise InputError(f"{where}: zero_random_weights.layer={layer!r}; valid: 0..{len(shapes) - 1}")
    size = shapes[layer][0] * shapes[layer][1]
    if not _int(count) or not 1 <= count <= size:
        raise InputError(
            f"{where}: zero_random_weights.count={count!r}; valid: 1..{size} (the weights of block {layer}'s matrix)"
        )
    if not _int(seed):
        raise InputError(f"{where}: zero_random_weights.seed={seed!r}; valid: an integer")
    return ZeroRandomWeights({"layer": layer, "count": count, "seed": seed})


def _check_spec(
    name: str, spec: Any, n_layer: int, n_head: int, shapes: list[Shape] | None, attention: AttentionShape | None = None
) -> tuple[list[Head] | Select, BlockEditSpec | WeightEditSpec | QKEditSpec | None]:
    """One variant, typed (from LightningCLI) or as plain YAML: its heads (or the `Select`
    to resolve against scores) and its edit of a block output or of weights, checked
    against the model."""
    if is_dataclass(spec):
        spec = asdict(spec)
    if isinstance(spec, dict) and ({*EDIT_FORMS, "prune_heads"} & set(spec)):
        unknown = set(spec) - {*EDIT_FORMS, "prune_heads"}
        if unknown or len(set(EDIT_FORMS) & set(spec)) > 1:
            raise InputError(
                f"variant {name!r}: {spec!r}; expected one of {', '.join(EDIT_FORMS)}, optionally with prune_heads"
            )
        if "zero_weights" in spec or "zero_random_weights" in spec:
            edit = _check_weights(name, spec, shapes)
        elif "zero_qk_dims" in spec or "zero_random_qk_dims" in spec:
            edit = check_qk(f"variant {name!r}", spec, attention, _check_layer)
        elif "quantize" in spec:
            edit = check_quantize(f"variant {name!r}", spec, n_layer, _check_layer)
        elif "set_massive" in spec or "set_random" in spec:
            edit = _check_edit(name, spec, n_layer)
        else:
            edit = None
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
    variants: dict[str, Any] | None,
    sweep: Sweep | None,
    n_layer: int,
    n_head: int,
    shapes: list[Shape] | None = None,
    attention: AttentionShape | None = None,
) -> tuple[dict[str, list[Head] | Select], dict[str, BlockEditSpec | WeightEditSpec | QKEditSpec]]:
    """Each variant's heads (or a `Select` to resolve against scores), and its edit of a
    block output or of weights, if any. Accepts the typed specs and their plain YAML forms
    alike. `shapes`: per block, (rows, cols) of the MLP output projection W[j, i], for the
    weight forms (None: the model has none); `attention`: its heads and head size, for the q/k forms."""
    specs: dict[str, list[Head] | Select] = {}
    edits: dict[str, BlockEditSpec | WeightEditSpec | QKEditSpec] = {}
    for name, spec in (variants or {}).items():
        if name == BASELINE:
            raise InputError(f"variant name {BASELINE!r} is reserved for the unpruned model; rename it")
        if name in RUN_TAGS or "/" in name or not name.strip():
            raise InputError(
                f"variant name {name!r} is not usable: a name is one TensorBoard run and the first "
                f"part of its tags, so it may not be empty, hold '/' or be one of the run's own "
                f"groups ({', '.join(sorted(RUN_TAGS))}); rename it"
            )
        specs[name], edit = _check_spec(name, spec, n_layer, n_head, shapes, attention)
        if edit is not None:
            edits[name] = edit
    if sweep is not None:
        specs.update(_sweep_specs(sweep, n_layer, n_head))
    return specs, edits
