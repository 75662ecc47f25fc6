"""Components: for every massive (dim, position), what enters each block there and what its
attention and MLP add (they sum to the block output): who writes massive activations, and
who removes them.

A block follows the entries that are massive in its input (the previous block's output) or
in its output: the block that writes one (massive out, not in), the blocks that carry it,
and the block that removes it (massive in, not out). Both sets are known in the block's
hook, so the three sublayer tensors are reduced there to those entries and released:
nothing of T x D per block outlives its block."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lit_massive.analyses.base import Analysis, Block, Forward, Setup, SumStatesMetric, cat_rows, valid_rows
from lit_massive.analyses.registry import register_analysis
from lit_massive.errors import InputError
from lit_massive.figures import figures
from lit_massive.probes import Needs
from lit_massive.probes.block_stats import flat_location, massive_union

COMPONENT_FIGURES = 3  # (dim, position) pairs with the largest value get a components figure


class Components(SumStatesMetric):
    """For each (dim, position) of a window massive at a block's input or output, what
    enters that block there and what its attention and MLP add: rows of (dim, position,
    layer, resid_in, attn, mlp), kept as fixed-shape candidate rows with a validity column
    until `compute`."""

    rows: list[Tensor]  # (n, 7) float32 each: dim, position, layer, resid_in, attn, mlp, valid
    overflow: Tensor  # () int64, windows with more massive entries than candidates

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("rows", [], dist_reduce_fx="cat")
        self.add_state("overflow", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, blocks: list[tuple[Tensor, Tensor]]) -> None:
        """Per block, `block_rows`: its (B * K, 7) rows and which windows overflowed (B,)."""
        self.rows.append(torch.cat([rows for rows, _ in blocks]))
        # a window counts once, however many blocks it overflowed in
        self.overflow += torch.stack([over for _, over in blocks]).any(dim=0).sum()

    def compute(self) -> dict[str, Tensor]:
        return {"rows": valid_rows(cat_rows(self.rows, 7)), "overflow": self.overflow}


def block_rows(block: Block, candidates: int) -> tuple[Tensor, Tensor]:
    """The entries massive in the block's input or output, `massive_union`'d into K =
    `candidates` slots, and the block input, attention and MLP there: rows (B * K, 7) of
    (dim, position, layer, resid_in, attn, mlp, valid), and which windows had more (B,)."""
    seen = [s for s in (block.entering, block.stats) if s is not None]
    index, valid, overflow = massive_union(seen, candidates)
    dim, position = flat_location(index, block.output.shape[-1])
    values = [t.detach().flatten(1).gather(1, index).float() for t in block.sublayers]
    columns = [dim.float(), position.float(), torch.full_like(values[0], block.index), *values, valid.float()]
    return torch.stack(columns, dim=-1).flatten(0, 1), overflow


def component_entries(rows: Tensor) -> list[dict]:
    """Per (dim, position) and layer: mean input, attention and MLP contributions, over the
    sequences where that (dim, position) is massive at that block's input or output."""
    sums: dict[tuple[int, int, int], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0])
    for dim, position, layer, resid_in, attn, mlp in rows.tolist():
        acc = sums[(int(dim), int(position), int(layer))]
        acc[0] += resid_in
        acc[1] += attn
        acc[2] += mlp
        acc[3] += 1
    return [
        {"layer": layer, "dim": dim, "position": position, "resid_in": r / n, "attn": a / n, "mlp": m / n,
         "sequences": n}
        for (dim, position, layer), (r, a, m, n) in sorted(sums.items())
    ]  # fmt: skip


@dataclass
class ComponentsOptions:
    """For every massive (dim, position), what enters each block there and what its attention
    and MLP add (who writes massive activations).

    Args:
        enabled: measure it.
    """

    enabled: bool = False


@register_analysis
class ComponentsAnalysis(Analysis):
    """Follows each window's massive entries through the input, attention and MLP of every
    block they enter or leave massive."""

    name = "components"
    Options = ComponentsOptions
    moved = {"components": "enabled"}
    needs = Needs(sublayers=True)
    reduces_blocks = True
    keys = ("components", "components_overflow")

    def __init__(self, setup: Setup) -> None:
        if not setup.layout.additive:
            raise InputError(
                f"components: {setup.options['model_name_or_path']!r} normalises after each residual sum "
                f"(OPT with do_layer_norm_before=false), so no sublayer adds to the stream; set components: false"
            )
        super().__init__(setup)
        self.candidates = setup.options["massive_candidates"]

    def new_metric(self, setup: Setup) -> Components:
        return Components()

    def reduce_block(self, block: Block) -> tuple[Tensor, Tensor]:
        return block_rows(block, self.candidates)

    def update(self, variant: str, forward: Forward) -> None:
        self.metrics[variant].update(forward.probed.reduced[self.name])

    def section(self, computed: dict[str, Tensor], decode: Callable[[int], str]) -> dict[str, Any]:
        return {
            "components": component_entries(computed["rows"]),
            # windows with more massive entries than model.massive_candidates at some block's
            # input and output together: some were not followed there
            "components_overflow": int(computed["overflow"]),
        }

    @classmethod
    def publish(cls, out, model: str, name: str, entry: dict[str, Any]) -> None:
        by_location: dict[tuple[int, int], list[dict]] = {}
        for e in entry["components"]:
            by_location.setdefault((e["dim"], e["position"]), []).append(e)
        largest = sorted(
            by_location.items(), key=lambda kv: -max(abs(e["resid_in"] + e["attn"] + e["mlp"]) for e in kv[1])
        )
        # the token at each located (dim, position): position 0 may be BOS, later ones "." or "\n"
        located = sorted(entry["massive"], key=lambda e: e["fraction"])
        token_at = {(e["dim"], e["position"]): e["token"] for e in located}
        for (dim, position), entries in largest[:COMPONENT_FIGURES]:
            token = token_at.get((dim, position))
            title = f"{model}: {name}, dim {dim}, position {position}" + (f" ({token!r})" if token is not None else "")
            fig, _ = figures.components_figure(entries, title)
            out.figure(f"{name}/figures/components_dim{dim}_pos{position}", fig)

    @classmethod
    def warnings(cls, name: str, entry: dict[str, Any]) -> list[str]:
        if not entry["components_overflow"]:
            return []
        return [
            f"{name}: more massive entries per window than model.massive_candidates in "
            f"{entry['components_overflow']} windows; the components followed that many of them only. "
            f"Raise model.massive_candidates to record them all"
        ]
