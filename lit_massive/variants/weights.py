"""Weight variants: zero scalars W[j, i] of MLP output projections (super weights, Yu et al.,
arXiv 2411.07191): the ones a config lists, this run's own candidates, or as many drawn at
random from one block's matrix (the control). Chosen once on the host; the probes zero them
during the variant's passes and restore them after (`probes.weights`)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lit_massive.models.families import DecoderLayout
from lit_massive.probes.weights import ZeroedWeights
from lit_massive.variants.specs import SUPER, Shape, Weight, WeightEditSpec, ZeroRandomWeights

NOTHING_ZEROED = "this run's baseline has no super-weight candidate: nothing was zeroed"


@dataclass(frozen=True)
class WeightEdit:
    """What a weight variant zeroed, as results.json records it (its `edit`).

    `to` names the form: ``zero_weights`` (`weights_from`: ``given``, the config's list, or
    ``super``, this run's candidates) or ``zero_random_weights`` (`weights_from`: ``random``,
    `count` weights of block `layer`'s matrix drawn with `seed`). `weights`: each
    {layer, row, col, weight}, with the value W[j, i] had, as the model holds it; `layers`
    the blocks they are in; `note` says why nothing was zeroed, when nothing was."""

    to: str
    weights_from: str
    layers: list[int]
    weights: list[dict[str, Any]]
    layer: int | None = None
    count: int | None = None
    seed: int | None = None
    note: str | None = None


def down_shapes(layout: DecoderLayout) -> list[Shape] | None:
    """Per block, the (rows, cols) of its MLP output projection's W[j, i] (GPT-2's Conv1D
    stores it transposed); None for a family without one module per block (Mixtral)."""
    if layout.mlp_down is None:
        return None
    shapes = [tuple(m.weight.shape) for m in layout.mlp_down]
    return [s if isinstance(m, nn.Linear) else s[::-1] for m, s in zip(layout.mlp_down, shapes, strict=True)]


def chosen_weights(spec: WeightEditSpec, shapes: list[Shape], baseline: dict[str, Any] | None) -> list[Weight]:
    """The (layer, row, col) a weight variant zeroes, sorted: the listed ones, this run's
    candidates (`baseline`, a first pass's entry holding ``super_weights``), or `count`
    drawn uniformly without replacement from block `layer`'s matrix with Python's
    `random.Random(seed)`: the same draw in every process and on every machine."""
    if isinstance(spec, ZeroRandomWeights):
        args = spec.zero_random_weights
        layer, (rows, cols) = args["layer"], shapes[args["layer"]]
        drawn = random.Random(args.get("seed", 0)).sample(range(rows * cols), args["count"])
        return sorted((layer, k // cols, k % cols) for k in drawn)
    if spec.zero_weights == SUPER:
        return sorted({(c["layer"], c["row"], c["col"]) for c in (baseline or {}).get("super_weights") or []})
    return sorted(set(map(tuple, spec.zero_weights)))


def zeroed_on(weights: list[Weight], device: torch.device) -> list[ZeroedWeights]:
    """One `ZeroedWeights` per block of `weights`, on `device`."""
    out = []
    for layer in sorted({w[0] for w in weights}):
        here = [w for w in weights if w[0] == layer]
        rows = torch.tensor([w[1] for w in here], dtype=torch.long, device=device)
        cols = torch.tensor([w[2] for w in here], dtype=torch.long, device=device)
        out.append(ZeroedWeights(layer, rows, cols, torch.full((len(here),), float("nan"), device=device)))
    return out


def weight_record(spec: WeightEditSpec, zeroed: list[ZeroedWeights]) -> WeightEdit:
    """The variant's `WeightEdit`, with each weight's value as the last pass read it (NaN
    before any pass); read on the host once, after the pass."""
    weights = [
        {"layer": z.layer, "row": row, "col": col, "weight": value}
        for z in zeroed
        for row, col, value in zip(z.rows.tolist(), z.cols.tolist(), z.values.tolist(), strict=True)
    ]
    layers = [z.layer for z in zeroed]
    if isinstance(spec, ZeroRandomWeights):
        args = spec.zero_random_weights
        return WeightEdit("zero_random_weights", "random", layers, weights, args["layer"], args["count"],
                          args.get("seed", 0))  # fmt: skip
    if spec.zero_weights != SUPER:
        return WeightEdit("zero_weights", "given", layers, weights)
    note = None if weights else NOTHING_ZEROED
    return WeightEdit("zero_weights", SUPER, layers, weights, note=note)
