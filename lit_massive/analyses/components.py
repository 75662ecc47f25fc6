"""Components: for every massive (dim, position), what enters each block there and what its
attention and MLP add (they sum to the block output): who writes massive activations."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lit_massive.analyses.base import Analysis, Forward, Setup, SumStatesMetric, cat_rows, valid_rows
from lit_massive.analyses.block_stats import flat_location, massive_union
from lit_massive.analyses.registry import register_analysis
from lit_massive.errors import InputError
from lit_massive.probes import Needs
from lit_massive.report import figures

COMPONENT_FIGURES = 3  # (dim, position) pairs with the largest value get a components figure


class Components(SumStatesMetric):
    """For each massive (dim, position) of a sequence, what enters every block there and
    what its attention and MLP add: rows of (dim, position, layer, resid_in, attn, mlp),
    kept as fixed-shape candidate rows with a validity column until `compute`."""

    rows: list[Tensor]  # (n, 7) float32 each: dim, position, layer, resid_in, attn, mlp, valid
    overflow: Tensor  # () int64, sequences with more massive entries than candidates

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("rows", [], dist_reduce_fx="cat")
        self.add_state("overflow", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(
        self,
        block_in: list[Tensor],
        attn_out: list[Tensor],
        mlp_out: list[Tensor],
        entries: tuple[Tensor, Tensor, Tensor],
    ) -> None:
        """`entries` = `massive_union(...)`: flat indices (B, K) to follow through every
        layer, their validity (B, K), and which sequences overflowed K (B,)."""
        index, valid, overflow = entries
        dim, position = flat_location(index, block_in[0].shape[-1])
        rows = []
        for i, parts in enumerate(zip(block_in, attn_out, mlp_out, strict=True)):
            values = [t.detach().flatten(1).gather(1, index).float() for t in parts]
            columns = [dim.float(), position.float(), torch.full_like(values[0], i), *values, valid.float()]
            rows.append(torch.stack(columns, dim=-1).flatten(0, 1))
        self.rows.append(torch.cat(rows))
        self.overflow += overflow.sum()

    def compute(self) -> dict[str, Tensor]:
        return {"rows": valid_rows(cat_rows(self.rows, 7)), "overflow": self.overflow}


def component_entries(rows: Tensor) -> list[dict]:
    """Per massive (dim, position) and layer: mean input, attention and MLP contributions,
    over the sequences where that (dim, position) is massive in some block output."""
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


@register_analysis
class ComponentsAnalysis(Analysis):
    """Follows each window's massive entries through every block's input, attention and MLP."""

    name = "components"
    option = "components"
    needs = Needs(sublayers=True)
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

    def update(self, variant: str, forward: Forward) -> None:
        p = forward.probed
        self.metrics[variant].update(p.block_in, p.attn_out, p.mlp_out, massive_union(forward.stats, self.candidates))

    def section(self, computed: dict[str, Tensor], decode: Callable[[int], str]) -> dict[str, Any]:
        return {
            "components": component_entries(computed["rows"]),
            # sequences with more massive entries than model.massive_candidates: some were not followed
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
            f"{name}: more massive entries per sequence than model.massive_candidates in "
            f"{entry['components_overflow']} sequences; the components kept the largest ones only. "
            f"Raise model.massive_candidates to record them all"
        ]
