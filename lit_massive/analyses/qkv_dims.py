"""Massive dims of queries and keys (`model.analyses.qkv_dims.enabled`; Jin et al., arXiv 2502.01563): a few
dims of q and k (not v) carry most of their norm, in RoPE's low-frequency pairs.

Per window and (layer, head), each dim's L2 norm over the window's tokens, for q, k and v
as the attention function receives them (after RoPE and q/k norms; OPT's queries arrive
pre-scaled by head_dim^-0.5, which changes norms, not which dims are massive); a dim is
massive when its norm exceeds `model.analyses.qkv_dims.massive_ratio` (5, as Jin et al.) times the mean
over the head's dims. Rotary models get the same per rotary pair of q and k: a pair's norm
over the tokens does not depend on the positions RoPE rotates it by. Keys and values are
reported per KV head (grouped-query attention: one tensor, read by a group of query heads),
so a KV head's dims are counted once. The per-dim norms of every head are in results.json
(L x H x head_dim numbers per part: megabytes for a 7B model, hence off by default).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lit_massive.analyses.base import Analysis, Forward, Setup, SumStatesMetric
from lit_massive.analyses.head_scores import matrix
from lit_massive.analyses.layer_profile import finite
from lit_massive.analyses.registry import register_analysis
from lit_massive.figures import qkv_figures
from lit_massive.figures.head_figures import head_mean
from lit_massive.options import NonNegativeFloat
from lit_massive.probes import Needs
from lit_massive.probes.qkv import QKVNorms, RotaryPairs, massive_dims, rotary_pairs

DIM_PARTS = ("q", "k", "v")
PAIR_PARTS = ("q_pairs", "k_pairs")


class MassiveDims(SumStatesMetric):
    """Per part (q, k, v per dim; q, k per rotary pair) and (layer, head), sums over windows:
    of each entry's norm, of the windows where it is massive, of the number of massive
    entries and of their share of the head's squared norm, and the windows counted. A window
    whose head has a zero or non-finite squared norm (half-precision overflow upstream) is
    left out of that head's sums."""

    def __init__(
        self, n_layer: int, heads: dict[str, int], width: int, ratio: float, rotary: RotaryPairs | None, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.ratio, self.rotary = ratio, rotary
        self.parts = DIM_PARTS + (PAIR_PARTS if rotary is not None else ())
        for part in self.parts:
            h = heads[part[0]]
            n = width if part in DIM_PARTS else rotary.n_pairs
            self.add_state(f"{part}_norm", torch.zeros(n_layer, h, n, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{part}_hits", torch.zeros(n_layer, h, n, dtype=torch.int64), dist_reduce_fx="sum")
            self.add_state(f"{part}_count", torch.zeros(n_layer, h, dtype=torch.int64), dist_reduce_fx="sum")
            self.add_state(f"{part}_share", torch.zeros(n_layer, h, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{part}_windows", torch.zeros(n_layer, h, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, records: list[QKVNorms]) -> None:
        """Add one batch: `records[l]` is layer l's `QKVNorms`."""
        dims = {
            "q": torch.stack([r.query for r in records]),  # (L, B, H, hd)
            "k": torch.stack([r.key for r in records]),  # (L, B, H_kv, hd)
            "v": torch.stack([r.value for r in records]),
        }
        for part in self.parts:
            x = dims[part[0]]
            total = x.square().sum(dim=-1)  # (L, B, H): the head's squared norm, every dim
            norms = x if part in DIM_PARTS else self.rotary.norms(x)
            massive, share = massive_dims(norms, self.ratio, total)
            ok = torch.isfinite(total) & (total > 0)
            massive &= ok[..., None]
            getattr(self, f"{part}_norm").add_(torch.where(ok[..., None], norms, 0.0).sum(dim=1, dtype=torch.float64))
            getattr(self, f"{part}_hits").add_(massive.sum(dim=1))
            getattr(self, f"{part}_count").add_(massive.sum(dim=(1, 3)))
            getattr(self, f"{part}_share").add_(torch.where(ok, share, 0.0).sum(dim=1, dtype=torch.float64))
            getattr(self, f"{part}_windows").add_(ok.sum(dim=1))

    def compute(self) -> dict[str, Tensor]:
        """Per part: mean norms (L, H, n), mean count and share (L, H) (NaN where no window
        counted), the windows where each entry is massive (L, H, n) and the windows (L, H)."""
        out = {}
        for part in self.parts:
            windows = getattr(self, f"{part}_windows")
            n = windows.to(torch.float64)
            out[f"{part}_norm"] = getattr(self, f"{part}_norm") / n[..., None]
            out[f"{part}_count"] = getattr(self, f"{part}_count") / n
            out[f"{part}_share"] = getattr(self, f"{part}_share") / n
            out[f"{part}_hits"] = getattr(self, f"{part}_hits")
            out[f"{part}_windows"] = windows
        return out


def ranked(hits: Tensor, windows: Tensor) -> tuple[list[list[list[int]]], list[list[list[float]]]]:
    """Per (layer, head), the entries massive in at least one window, most often first (on a
    tie the lower index), and the share of windows where each is: exact counts, so the same
    order on any number of processes."""
    entries, fractions = [], []
    for layer_hits, layer_windows in zip(hits.tolist(), windows.tolist(), strict=True):
        entries.append([]), fractions.append([])
        for head_hits, n in zip(layer_hits, layer_windows, strict=True):
            order = sorted((j for j, c in enumerate(head_hits) if c > 0), key=lambda j: (-head_hits[j], j))
            entries[-1].append(order)
            fractions[-1].append([head_hits[j] / n for j in order])
    return entries, fractions


def part_section(computed: dict[str, Tensor], part: str, entries: str) -> dict[str, Any]:
    """One part's keys: `count`, `share` (L x H), `entries` (L x H lists, most frequent first),
    `fraction` (aligned with them), `norms` (L x H x n)."""
    order, fraction = ranked(computed[f"{part}_hits"], computed[f"{part}_windows"])
    return {
        "count": matrix(computed[f"{part}_count"]),
        "share": matrix(computed[f"{part}_share"]),
        entries: order,
        "fraction": fraction,
        "norms": [matrix(layer) for layer in computed[f"{part}_norm"]],
    }


@dataclass
class QKVDimsOptions:
    """Massive dims of q, k, v and rotary pairs per head (Jin et al., arXiv 2502.01563;
    docs/analyses/qkv-dims.md).

    Args:
        enabled: measure it.
        massive_ratio: a dim is massive above this many times its head's mean (5 in Jin et al.).
    """

    enabled: bool = False
    massive_ratio: NonNegativeFloat = 5.0


@register_analysis
class QKVDims(Analysis):
    """`qkv_massive_dims` = {"q" | "k" | "v": {"count": L x H mean number of massive dims,
    "share": L x H their mean share of the head's squared norm, "dims": L x H lists of the
    dims massive in some window (most often first), "fraction": the share of windows where
    each is, "norms": L x H x head_dim mean norms}} (k and v with H_kv heads);
    `qk_rotary_pairs` = the same for "q" and "k" per rotary pair ("pairs" for "dims"), with
    "pair_dims" (each pair's two dims), "rotary_dim", "layout", "pair_frequency" (L x P
    radians per position) and per layer "rope_parameters" and "attention_scaling" (null
    for models without RoPE); `qkv_massive_ratio`."""

    name = "qkv_dims"
    Options = QKVDimsOptions
    moved = {"qkv_dims": "enabled", "qkv_massive_ratio": "massive_ratio"}
    needs = Needs(attention=True, qkv_dims=True)
    keys = ("qkv_massive_dims", "qk_rotary_pairs", "qkv_massive_ratio")

    def __init__(self, setup: Setup) -> None:
        self.rotary = rotary_pairs(setup.layout)
        self.ratio = float(setup.of("qkv_dims").massive_ratio)
        super().__init__(setup)

    def new_metric(self, setup: Setup) -> MassiveDims:
        lay = setup.layout
        config = lay.backbone.config
        width = getattr(config, "head_dim", None) or lay.n_embd // lay.n_head
        heads = {"q": lay.n_head, "k": lay.n_kv_head, "v": lay.n_kv_head}
        return MassiveDims(lay.n_layer, heads, width, self.ratio, self.rotary)

    def update(self, variant: str, forward: Forward) -> None:
        self.metrics[variant].update(forward.probed.qkv)

    def section(self, computed: dict[str, Tensor], decode: Callable[[int], str]) -> dict[str, Any]:
        rotary = self.rotary
        pairs = None
        if rotary is not None:
            pairs = {
                "q": part_section(computed, "q_pairs", "pairs"),
                "k": part_section(computed, "k_pairs", "pairs"),
                "pair_dims": rotary.dims(),
                "rotary_dim": rotary.rotary_dim,
                "layout": rotary.layout,
                "pair_frequency": [[finite(f) for f in layer] for layer in rotary.inv_freq.tolist()],
                "rope_parameters": rotary.rope_parameters,
                "attention_scaling": rotary.attention_scaling,
            }
        return {
            "qkv_massive_dims": {part: part_section(computed, part, "dims") for part in DIM_PARTS},
            "qk_rotary_pairs": pairs,
            "qkv_massive_ratio": self.ratio,
        }

    @classmethod
    def publish(cls, out, model: str, name: str, entry: dict[str, Any]) -> None:
        dims, ratio = entry["qkv_massive_dims"], entry["qkv_massive_ratio"]
        for part, label in (("q", "query head"), ("k", "KV head")):
            title = f"{model}: {name}, {part} dims (massive: > {ratio:g}x the head's mean)"
            fig, _ = qkv_figures.dim_norms_figure(dims[part]["norms"], ratio, title, label)
            out.figure(f"{name}/figures/{part}_dim_norms", fig)
        for part in DIM_PARTS:
            for layer, row in enumerate(dims[part]["count"]):
                out.scalar(f"{name}/qkv_dims/{part}_massive_count", head_mean(row), layer)
