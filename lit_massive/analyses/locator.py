"""The locator: every (layer, dim, position) that is massive in at least one window, with
the token most often there, its mean value and the share of windows."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lit_massive.analyses.base import Analysis, Forward, Setup, SumStatesMetric, cat_rows, valid_rows
from lit_massive.analyses.registry import register_analysis
from lit_massive.probes.block_stats import BlockStats, flat_location
from lit_massive.results.markdown import markdown_table

LOCATOR_ROWS = 50  # largest located massive activations shown; all are in results.json


class Locator(SumStatesMetric):
    """Every massive entry of every sequence and layer, as fixed-shape candidate rows with a
    validity column (so `update` reads nothing back to the host), filtered in `compute`."""

    rows: list[Tensor]  # (n, 6) float32 each: layer, dim, position, token, value, valid
    count: Tensor  # () int64, sequences seen

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # few rows per sequence, so gathered as rows, not summed densely
        self.add_state("rows", [], dist_reduce_fx="cat")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, stats: list[BlockStats], input_ids: Tensor) -> None:
        rows = []
        for i, s in enumerate(stats):
            dim, position = flat_location(s.candidate_index, s.n_embd)  # (B, K)
            columns = (torch.full_like(dim, i), dim, position, input_ids.gather(1, position))
            # float32 rows: ids, dims and positions are exact below 2**24; values are float32 already
            rows.append(
                torch.stack([*(c.float() for c in columns), s.candidate_value, s.massive.float()], -1).flatten(0, 1)
            )
        self.rows.append(torch.cat(rows))
        self.count += input_ids.shape[0]

    def compute(self) -> dict[str, Tensor]:
        return {"rows": valid_rows(cat_rows(self.rows, 6)), "count": self.count}


def locate_massive(rows: Tensor, count: int, decode: Callable[[int], str]) -> list[dict]:
    """Every (layer, dim, position) that is massive in at least one sequence: the token most
    often there (on a tie the lowest token id), the mean signed value where massive, and the
    share of sequences. Neither depends on the order of `rows`, which differs with the
    number of processes (rows are gathered rank by rank)."""
    groups: dict[tuple[int, int, int], list[tuple[int, float]]] = defaultdict(list)
    for layer, dim, position, token, value in rows.tolist():
        groups[(int(layer), int(dim), int(position))].append((int(token), value))
    out = []
    for (layer, dim, position), hits in sorted(groups.items()):
        counts = Counter(t for t, _ in hits)
        token = min(counts, key=lambda t: (-counts[t], t))
        out.append(
            {
                "layer": layer,
                "dim": dim,
                "position": position,
                "token_id": token,
                "token": decode(token),
                "value": math.fsum(v for _, v in hits) / len(hits),  # exactly rounded: any order
                "fraction": len(hits) / max(count, 1),
            }
        )
    return out


def locator_table(massive: list[dict]) -> str:
    """The largest located massive activations (all of them are in results.json), in layer
    order, largest |value| first within a layer."""
    largest = sorted(massive, key=lambda e: -abs(e["value"]))[:LOCATOR_ROWS]
    shown = sorted(largest, key=lambda e: (e["layer"], -abs(e["value"]), e["dim"], e["position"]))
    rows = [
        [str(e["layer"]), str(e["dim"]), str(e["position"]), f"`{e['token']!r}`", f"{e['value']:.4g}",
         f"{e['fraction']:.2f}"]
        for e in shown
    ]  # fmt: skip
    note = f"\n\n{len(massive) - len(shown)} more in results.json" if len(massive) > len(shown) else ""
    return markdown_table(["layer", "dim", "position", "token", "mean value", "share of windows"], rows) + note


@register_analysis
class LocatorAnalysis(Analysis):
    """Where massive activations sit: always on (its rows are few per window)."""

    name = "locator"
    keys = ("massive",)

    def new_metric(self, setup: Setup) -> Locator:
        return Locator()

    def update(self, variant: str, forward: Forward) -> None:
        self.metrics[variant].update(forward.stats, forward.input_ids)

    def section(self, computed: dict[str, Tensor], decode: Callable[[int], str]) -> dict[str, Any]:
        return {"massive": locate_massive(computed["rows"], int(computed["count"]), decode)}

    @classmethod
    def publish(cls, out, model: str, name: str, entry: dict[str, Any]) -> None:
        if entry["massive"]:
            out.text(f"{name}/tables/massive", locator_table(entry["massive"]))

    @classmethod
    def warnings(cls, name: str, entry: dict[str, Any]) -> list[str]:
        cut = [(row["layer"], row["locator_overflow"]) for row in entry["layers"] if row["locator_overflow"]]
        if not cut:
            return []
        return [
            f"{name}: more massive entries per window than model.massive_candidates in layers "
            f"(layer, windows): {cut}; the locator kept the largest ones only. Raise "
            f"model.massive_candidates to record them all"
        ]
