"""Variants that zero dims of the queries and keys inside the attention call (Jin et al.,
arXiv 2502.01563: zeroing the massive q/k dims breaks contextual tasks): the dims a config
lists, this run's own massive ones, or as many random non-massive ones per head (the
control). Checked and chosen once on the host; the attention probe multiplies q and k by
the variant's keep masks during its passes (`probes.attention.attention_probe`)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lit_massive.errors import InputError
from lit_massive.models.families import DecoderLayout
from lit_massive.variants.specs import MASSIVE, QKDim, QKEditSpec, ZeroQKDims, ZeroRandomQKDims, edited_layers

# a head's dim counts as one of its massive dims for `dims: massive` when it is massive in at
# least this share of the windows (`qkv_massive_dims`' `fraction`)
MASSIVE_SHARE = 0.5
NOTHING_MASSIVE = "this run's baseline has no massive q or k dim in the chosen layers: nothing was zeroed"
Keep = dict[int, tuple[Tensor, Tensor]]  # layer -> (q keep (H, hd), k keep (H_kv, hd)), 1 kept, 0 zeroed


@dataclass(frozen=True)
class AttentionShape:
    """What the checks need of the attention: heads, key/value heads and head size."""

    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int


def attention_shape(layout: DecoderLayout) -> AttentionShape:
    """The attention's heads and head size, from the model's layout and config."""
    config = layout.backbone.config
    head_dim = getattr(config, "head_dim", None) or layout.n_embd // layout.n_head
    return AttentionShape(layout.n_layer, layout.n_head, layout.n_kv_head, head_dim)


@dataclass(frozen=True)
class QKEdit:
    """What a q/k variant zeroed, as results.json records it (its `edit`): `to` names the
    form, `dims_from` is ``given``, ``massive`` or ``random``; `q_dims` [layer, query head,
    dim] and `k_dims` [layer, key head, dim] the dims zeroed; `note` why nothing was."""

    to: str
    dims_from: str
    layers: list[int]
    q_dims: list[list[int]]
    k_dims: list[list[int]]
    seed: int | None = None
    note: str | None = None


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_qk(where: str, spec: dict, shape: AttentionShape | None, check_layer) -> QKEditSpec:
    """`zero_qk_dims: {dims: massive | [[layer, head, dim], ...], layers}` or
    `zero_random_qk_dims: {layers, seed}`, checked against the model's attention."""
    kind = "zero_qk_dims" if "zero_qk_dims" in spec else "zero_random_qk_dims"
    if shape is None:
        raise InputError(f"{where}: {kind} needs the model's head size; this model does not say it")
    value = spec[kind]
    keys = {"dims", "layers"} if kind == "zero_qk_dims" else {"layers", "seed"}
    if not isinstance(value, dict) or set(value) - keys or (kind == "zero_qk_dims" and "dims" not in value):
        example = "{dims: massive, layers: all}" if kind == "zero_qk_dims" else "{layers: all, seed: 0}"
        raise InputError(f"{where}: {kind}={value!r}; expected {example}")
    layers = check_layer(f"{where}: {kind}.layers", value.get("layers", "all"), shape.n_layer)
    if kind == "zero_random_qk_dims":
        seed = value.get("seed", 0)
        if not _int(seed):
            raise InputError(f"{where}: zero_random_qk_dims.seed={seed!r}; valid: an integer")
        return ZeroRandomQKDims({"layers": layers, "seed": seed})
    dims = value["dims"]
    if dims == MASSIVE:
        return ZeroQKDims({"dims": MASSIVE, "layers": layers})
    if "layers" in value:
        raise InputError(f"{where}: zero_qk_dims takes layers with dims: {MASSIVE} only; a list names its layers")
    if not isinstance(dims, list | tuple) or not dims:
        raise InputError(f"{where}: zero_qk_dims.dims={dims!r}; valid: {MASSIVE} or [[layer, head, dim], ...]")
    out = []
    for d in dims:
        if not (isinstance(d, list | tuple) and len(d) == 3 and all(_int(v) for v in d)):
            raise InputError(f"{where}: zero_qk_dims.dims: {d!r} is not a [layer, head, dim] triple of integers")
        layer, head, dim = d
        if not (0 <= layer < shape.n_layer and 0 <= head < shape.n_head and 0 <= dim < shape.head_dim):
            raise InputError(
                f"{where}: zero_qk_dims.dims: {list(d)} out of range; valid: layer 0..{shape.n_layer - 1}, "
                f"head 0..{shape.n_head - 1}, dim 0..{shape.head_dim - 1}"
            )
        out.append(tuple(d))
    return ZeroQKDims({"dims": sorted(set(out))})


def _massive(baseline: dict[str, Any] | None, part: str) -> dict[tuple[int, int], list[int]]:
    """(layer, head) -> the dims of `part` (q or k) massive in at least `MASSIVE_SHARE` of the
    windows of this run's baseline (its ``qkv_massive_dims``)."""
    found = ((baseline or {}).get("qkv_massive_dims") or {}).get(part)
    if not found:
        return {}
    out = {}
    for layer, (dims, fractions) in enumerate(zip(found["dims"], found["fraction"], strict=True)):
        for head, (d, f) in enumerate(zip(dims, fractions, strict=True)):
            out[(layer, head)] = sorted(x for x, share in zip(d, f, strict=True) if share >= MASSIVE_SHARE)
    return out


def chosen_dims(
    spec: QKEditSpec, shape: AttentionShape, baseline: dict[str, Any] | None
) -> tuple[list[QKDim], list[QKDim]]:
    """The (layer, head, dim) zeroed in q (query heads) and in k (key heads): the listed
    ones (each in q and in the key head its query head reads), this run's massive ones, or
    per head as many non-massive ones drawn with `random.Random(seed)` in (layer, head) order:
    the same draw in every process."""
    group = shape.n_head // shape.n_kv_head
    if isinstance(spec, ZeroQKDims) and spec.zero_qk_dims["dims"] != MASSIVE:
        listed = [tuple(d) for d in spec.zero_qk_dims["dims"]]
        return sorted(listed), sorted({(layer, head // group, dim) for layer, head, dim in listed})
    args = spec.zero_qk_dims if isinstance(spec, ZeroQKDims) else spec.zero_random_qk_dims
    layers = set(edited_layers(args.get("layers", "all"), shape.n_layer))
    draw = random.Random(args.get("seed", 0)) if isinstance(spec, ZeroRandomQKDims) else None
    out = []
    for part in ("q", "k"):
        chosen = []
        for (layer, head), dims in sorted(_massive(baseline, part).items()):
            if layer not in layers or not dims:
                continue
            if draw is not None:
                dims = sorted(draw.sample([d for d in range(shape.head_dim) if d not in dims], len(dims)))
            chosen += [(layer, head, d) for d in dims]
        out.append(chosen)
    return out[0], out[1]


def keep_masks(q_dims: list[QKDim], k_dims: list[QKDim], shape: AttentionShape, device: torch.device) -> Keep:
    """Per layer with a zeroed dim, the (H, hd) and (H_kv, hd) masks q and k are multiplied by."""
    out: Keep = {}
    for layer in sorted({d[0] for d in q_dims + k_dims}):
        q = torch.ones(shape.n_head, shape.head_dim, device=device)
        k = torch.ones(shape.n_kv_head, shape.head_dim, device=device)
        for mask, dims in ((q, q_dims), (k, k_dims)):
            for at, head, dim in dims:
                if at == layer:
                    mask[head, dim] = 0.0
        out[layer] = (q, k)
    return out


def qk_record(spec: QKEditSpec, q_dims: list[QKDim], k_dims: list[QKDim], n_layer: int) -> QKEdit:
    """The variant's `QKEdit`."""
    layers = sorted({d[0] for d in q_dims + k_dims})
    as_lists = [[list(d) for d in q_dims], [list(d) for d in k_dims]]
    if isinstance(spec, ZeroRandomQKDims):
        note = None if layers else NOTHING_MASSIVE
        return QKEdit("zero_random_qk_dims", "random", layers, *as_lists, spec.zero_random_qk_dims.get("seed", 0), note)
    given = spec.zero_qk_dims["dims"] != MASSIVE
    note = None if layers or given else NOTHING_MASSIVE
    return QKEdit("zero_qk_dims", "given" if given else MASSIVE, layers, *as_lists, note=note)


def needs_baseline(spec: QKEditSpec) -> bool:
    """Whether the variant is defined by this run's own massive dims (a first pass)."""
    return isinstance(spec, ZeroRandomQKDims) or spec.zero_qk_dims["dims"] == MASSIVE
