"""Secondary sinks: keys other than the first that heads sink on (Gu et al.'s alpha_k above
`model.analyses.sink_rate.epsilon`, see `sink_rate`), per layer and token, and whether that token is massive
in the stream the block reads: sinks on "." or "\\n" are what the massive locator's later
massive tokens are expected to explain."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lit_massive.analyses.base import Analysis, Forward, Setup, SumStatesMetric, cat_rows, valid_rows
from lit_massive.analyses.registry import register_analysis
from lit_massive.analyses.sink_rate import key_attention
from lit_massive.figures import figures
from lit_massive.probes import Needs
from lit_massive.probes.block_stats import massive_positions
from lit_massive.results.markdown import markdown_table

SLOTS = 8  # sinking keys kept per window and layer, the most sunk-on first; more are counted
TABLE_ROWS = 30  # rows shown in TensorBoard's table; all are in results.json
WIDTH = 7  # row columns: layer, position, token, heads, alpha sum, entering massive, valid


class SinkKeys(SumStatesMetric):
    """Per window and layer, the keys k >= 1 on which some head sinks (alpha_k > epsilon), as
    fixed-shape rows (the `SLOTS` keys with the most such heads; a validity column), so the
    step reads nothing back to the host; windows with more are counted."""

    rows: list[Tensor]  # (n, WIDTH) float64 each
    overflow: Tensor  # () int64: (window, layer) pairs with more sinking keys than SLOTS
    windows: Tensor  # () int64

    def __init__(self, epsilon: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.add_state("rows", [], dist_reduce_fx="cat")
        self.add_state("overflow", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("windows", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, forward: Forward) -> None:
        probed, input_ids = forward.probed, forward.input_ids
        b, t = input_ids.shape
        slots = min(SLOTS, t - 1)
        rows = []
        for i, (r, n) in enumerate(zip(probed.received, probed.attended, strict=True)):
            if slots < 1:
                break
            ok = torch.isfinite(r).all(dim=-1, keepdim=True)  # (B, H, 1): heads with finite attention
            alpha = key_attention(r, n)[..., 1:]  # (B, H, T - 1): keys 1..
            sinking = (alpha > self.epsilon) & ok
            heads = sinking.sum(dim=1)  # (B, T - 1)
            alpha_sum = torch.where(sinking, alpha, 0.0).sum(dim=1, dtype=torch.float64)
            # the most sunk-on keys first (ties: the larger attention), fixed K
            order = (heads.double() * 4.0 + alpha_sum / r.shape[1]).topk(slots, dim=1).indices  # (B, K)
            position = order + 1
            entering = (
                massive_positions([forward.stats[i - 1]], t) if i else torch.zeros_like(input_ids, dtype=torch.bool)
            )
            count = heads.gather(1, order)
            columns = (
                torch.full_like(position, i), position, input_ids.gather(1, position), count,
                alpha_sum.gather(1, order), entering.gather(1, position), count > 0,
            )  # fmt: skip
            rows.append(torch.stack([c.double() for c in columns], dim=-1).flatten(0, 1))
            self.overflow += ((heads > 0).sum(dim=1) > slots).sum()
        if rows:
            self.rows.append(torch.cat(rows))
        self.windows += b

    def compute(self) -> dict[str, Tensor]:
        return {"rows": valid_rows(cat_rows(self.rows, WIDTH)), "overflow": self.overflow, "windows": self.windows}


def secondary_sinks(rows: Tensor, decode: Callable[[int], str]) -> list[dict]:
    """Per (layer, token): the (window, head) pairs that sink on it, their mean alpha, the
    position it sits at most often (ties: the first) and how many distinct ones, and the share
    of those pairs in windows where that token is massive in the stream entering the block.
    Independent of the order of `rows` (gathered rank by rank under several processes)."""
    groups: dict[tuple[int, int], list[tuple[int, int, float, bool]]] = defaultdict(list)
    for layer, position, token, heads, alpha_sum, entering in rows.tolist():
        groups[(int(layer), int(token))].append((int(position), int(heads), alpha_sum, entering > 0))
    out = []
    for (layer, token), hits in sorted(groups.items()):
        pairs = sum(h for _, h, _, _ in hits)
        positions = Counter(p for p, _, _, _ in hits)
        out.append(
            {
                "layer": layer,
                "token_id": token,
                "token": decode(token),
                "position": min(positions, key=lambda p: (-positions[p], p)),
                "positions": len(positions),
                "pairs": pairs,
                "mean_alpha": math.fsum(a for _, _, a, _ in hits) / pairs,
                "entering_massive": sum(h for _, h, _, e in hits if e) / pairs,
            }
        )
    return out


def secondary_sinks_table(rows: list[dict]) -> str:
    """The secondary sinks with the most (window, head) pairs, in layer order."""
    shown = sorted(sorted(rows, key=lambda e: (-e["pairs"], e["layer"], e["token_id"]))[:TABLE_ROWS],
                   key=lambda e: (e["layer"], -e["pairs"]))  # fmt: skip
    body = [
        [str(e["layer"]), f"`{e['token']!r}`", str(e["position"]), str(e["positions"]), str(e["pairs"]),
         f"{e['mean_alpha']:.3f}", f"{e['entering_massive']:.2f}"]
        for e in shown
    ]  # fmt: skip
    head = ["layer", "token", "position (most often)", "positions", "(window, head) pairs", "mean alpha",
            "share massive entering"]  # fmt: skip
    note = f"\n\n{len(rows) - len(shown)} more in results.json" if len(rows) > len(shown) else ""
    return markdown_table(head, body) + note


@register_analysis
class SecondarySinks(Analysis):
    """`secondary_sinks`: one row per (layer, token) that heads sink on at a key other than
    the first; `secondary_sink_overflow`: (window, layer) pairs with more sinking keys than
    the `SLOTS` kept (the rest of such a window is not recorded)."""

    name = "secondary_sinks"
    requires = ("head_scores", "sink_rate")  # the sink rate's epsilon
    needs = Needs(attention=True)
    keys = ("secondary_sinks", "secondary_sink_overflow")

    def new_metric(self, setup: Setup) -> SinkKeys:
        return SinkKeys(setup.of("sink_rate").epsilon)

    def section(self, computed: dict[str, Tensor], decode: Callable[[int], str]) -> dict[str, Any]:
        return {
            "secondary_sinks": secondary_sinks(computed["rows"], decode),
            "secondary_sink_overflow": int(computed["overflow"]),
        }

    @classmethod
    def publish(cls, out, model: str, name: str, entry: dict[str, Any]) -> None:
        rows = entry["secondary_sinks"]
        if not rows:
            return
        out.text(f"{name}/tables/secondary_sinks", secondary_sinks_table(rows))
        n_layer = len(entry["layers"])
        fig, _ = figures.secondary_sinks_figure(rows, n_layer, f"{model}: {name}")
        out.figure(f"{name}/figures/secondary_sinks", fig)

    @classmethod
    def warnings(cls, name: str, entry: dict[str, Any]) -> list[str]:
        cut = entry.get("secondary_sink_overflow")
        if not cut:
            return []
        return [
            f"{name}: {cut} (window, layer) pairs had more than {SLOTS} keys that heads sink on; "
            f"secondary_sinks kept the {SLOTS} most sunk-on keys of each"
        ]
