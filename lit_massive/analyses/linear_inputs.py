"""Activation spikes at every linear input (`model.analyses.linear_inputs.enabled`): what a massive value costs
a quantizer. A few values thousands of times the median set the scale of a per-tensor 8-bit
quantizer and round everything else to zero; per-token scales confine the damage to the
massive tokens (QFeM/QFeP, arXiv 2405.14428; CushionCache 2406.12016). Per block and input
(`probes.linear_inputs.KINDS`): the mean top-1 and median |x| over windows, where the top-1
sits (channel, position, token: the most frequent over windows, with its share, as the layer
profile reports the block output's), and the mean relative error ||x - Q(x)||^2 / ||x||^2 of
symmetric round-to-nearest 8-bit quantization with one scale per window and one per token."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lit_massive.analyses.base import Analysis, Forward, Setup, SumStatesMetric, cat_rows
from lit_massive.analyses.layer_profile import finite
from lit_massive.analyses.registry import register_analysis
from lit_massive.figures import figures
from lit_massive.probes import Needs
from lit_massive.probes.linear_inputs import KINDS
from lit_massive.results.markdown import cell, markdown_table

STATS = ("top", "median", "int8_error_per_tensor", "int8_error_per_token")  # averaged over windows


class InputSpikes(SumStatesMetric):
    """Per input kind and layer, float64 sums over windows of `STATS` and the windows counted
    (a window whose record is not finite, half-precision overflow upstream, is left out), and
    one row per (window, kind, layer): kind, layer, channel, position and token of its top-1."""

    sums: Tensor  # (K, L, S) float64
    windows: Tensor  # (K, L) int64
    rows: list[Tensor]  # (n, 6) float64, the last column: the record is finite

    def __init__(self, n_layer: int, widths: dict[str, int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.widths = widths  # kind (or "mlp_down_in/LAYER") -> the input's width C
        self.add_state("sums", torch.zeros(len(KINDS), n_layer, len(STATS), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("windows", torch.zeros(len(KINDS), n_layer, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("rows", [], dist_reduce_fx="cat")

    def update(self, forward: Forward) -> None:
        records, input_ids = forward.probed.linear_inputs, forward.input_ids
        rows = []
        for k, kind in enumerate(KINDS):
            for layer, r in enumerate(records.get(kind) or []):
                if r is None:
                    continue
                ok = torch.isfinite(r).all(dim=1)  # (B,)
                self.sums[k, layer] += torch.where(ok[:, None], r[:, [0, 2, 3, 4]], 0.0).sum(dim=0)
                self.windows[k, layer] += ok.sum()
                width = self.widths.get(kind) or self.widths[f"{kind}/{layer}"]
                index = r[:, 1].long()
                channel, position = index % width, torch.div(index, width, rounding_mode="floor")
                token = input_ids.gather(1, position[:, None]).squeeze(1)
                rows.append(torch.stack([torch.full_like(channel, k), torch.full_like(channel, layer), channel,
                                         position, token, ok.long()], dim=1).double())  # fmt: skip
        if rows:
            self.rows.append(torch.cat(rows))

    def compute(self) -> dict[str, Tensor]:
        return {"sums": self.sums, "windows": self.windows, "rows": cat_rows(self.rows, 6)}


def most_frequent(values: list[int]) -> tuple[int | None, float | None]:
    """The most frequent value (ties: the smallest) and its share; (None, None) for none."""
    if not values:
        return None, None
    counts = Counter(values)
    best = min(counts, key=lambda v: (-counts[v], v))
    return best, counts[best] / len(values)


def input_rows(
    sums: Tensor, windows: Tensor, rows: Tensor, n_layer: int, kinds: list[str], decode: Callable[[int], str]
) -> list[dict[str, Any]]:
    """One entry per layer: per input kind its means over windows and where its top-1 sits."""
    where: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for k, layer, channel, position, token, ok in rows.tolist():
        if ok:
            where.setdefault((int(k), int(layer)), []).append((int(channel), int(position), int(token)))
    out = []
    for layer in range(n_layer):
        entry: dict[str, Any] = {"layer": layer}
        for k, kind in enumerate(KINDS):
            n = int(windows[k, layer])
            if kind not in kinds or n == 0:
                entry[kind] = None
                continue
            top, median, per_tensor, per_token = (sums[k, layer] / n).tolist()
            hits = where.get((k, layer), [])
            channel, channel_share = most_frequent([h[0] for h in hits])
            position, position_share = most_frequent([h[1] for h in hits])
            token, token_share = most_frequent([h[2] for h in hits])
            entry[kind] = {
                "top1": finite(top),
                "median": finite(median),
                "top1_over_median": finite(top / median) if median else None,
                "top1_channel": channel,
                "top1_channel_fraction": channel_share,
                "top1_position": position,
                "top1_position_fraction": position_share,
                "top1_token_id": token,
                "top1_token": None if token is None else decode(token),
                "top1_token_fraction": token_share,
                "int8_error_per_tensor": finite(per_tensor),
                "int8_error_per_token": finite(per_token),
            }
        out.append(entry)
    return out


@dataclass
class LinearInputsOptions:
    """Per block, spikes at every linear layer's input and their 8-bit rounding error per
    tensor and per token (docs/analyses/linear-inputs.md).

    Args:
        enabled: measure it.
    """

    enabled: bool = False


@register_analysis
class LinearInputs(Analysis):
    """`linear_inputs`: per layer, for `attn_in`, `attn_out_proj_in`, `mlp_in` and
    `mlp_down_in` (null for a mixture of experts: no single projection), the top-1 and median
    |x|, their ratio, where the top-1 sits and the 8-bit rounding errors per tensor and per token."""

    name = "linear_inputs"
    Options = LinearInputsOptions
    moved = {"linear_inputs": "enabled"}
    needs = Needs(linear_inputs=True)
    keys = ("linear_inputs",)

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        lay = setup.layout
        self.n_layer = lay.n_layer
        self.kinds = [k for k in KINDS if k != "mlp_down_in" or lay.mlp_down is not None]

    def new_metric(self, setup: Setup) -> InputSpikes:
        lay = setup.layout
        widths = {"attn_in": lay.n_embd, "mlp_in": lay.n_embd}
        widths["attn_out_proj_in"] = _in_features(lay.attn_out_proj[0], lay.n_embd)
        for i, down in enumerate(lay.mlp_down or []):
            widths[f"mlp_down_in/{i}"] = _in_features(down, lay.n_embd)
        return InputSpikes(lay.n_layer, widths)

    def section(self, computed: dict[str, Tensor], decode: Callable[[int], str]) -> dict[str, Any]:
        rows = input_rows(computed["sums"], computed["windows"], computed["rows"], self.n_layer, self.kinds, decode)
        return {"linear_inputs": rows}

    @classmethod
    def publish(cls, out, model: str, name: str, entry: dict[str, Any]) -> None:
        rows = entry["linear_inputs"]
        fig, _ = figures.linear_inputs_figure(rows, KINDS, f"{model}: {name}")
        out.figure(f"{name}/figures/linear_inputs", fig)
        out.text(f"{name}/tables/linear_inputs", linear_inputs_table(rows))
        for row in rows:
            for kind in KINDS:
                for stat in ("top1_over_median", "int8_error_per_tensor", "int8_error_per_token"):
                    value = None if row[kind] is None else row[kind][stat]
                    out.scalar(f"{name}/linear_inputs/{kind}_{stat}", value, row["layer"])


def _in_features(module: torch.nn.Module, default: int) -> int:
    """The input width of a linear layer (GPT-2's Conv1D stores (in, out))."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features
    weight = getattr(module, "weight", None)
    return default if weight is None else int(weight.shape[0])


def linear_inputs_table(rows: list[dict[str, Any]]) -> str:
    """Per layer and input: top-1 / median, where the top-1 sits and the two 8-bit errors."""
    body = []
    for row in rows:
        for kind in KINDS:
            e = row[kind]
            if e is None:
                continue
            body.append([str(row["layer"]), kind, cell(e["top1"], ".4g"), cell(e["top1_over_median"], ".1f"),
                         f"{e['top1_channel']} ({e['top1_channel_fraction']:.2f})",
                         f"{e['top1_position']} ({e['top1_position_fraction']:.2f})", f"`{e['top1_token']!r}`",
                         cell(e["int8_error_per_tensor"], ".2e"), cell(e["int8_error_per_token"], ".2e")])  # fmt: skip
    head = ["layer", "input", "top-1", "top-1 / median", "channel (share)", "position (share)", "token",
            "8-bit error per tensor", "per token"]  # fmt: skip
    return markdown_table(head, body)
