"""The super-weight locator (Yu et al., arXiv 2411.07191, "The Super Weight in Large Language
Models"): one scalar W[j, i] of an MLP output projection turns a spike of its input at
channel i into a massive activation at output channel j. Found in one forward pass: per
block, where the projection's input and output are largest; per variant, the blocks whose
output top-1 meets the massive criterion, as candidates (layer, row j, col i, W[j, i]).

Per window and block the probe (`probes.mlp`) keeps one fixed-size row, gathered across
processes as rows ("cat") and summarised once per epoch, like the locator's.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lit_massive.analyses.base import Analysis, Column, Forward, Setup, SumStatesMetric, cat_rows
from lit_massive.analyses.registry import register_analysis
from lit_massive.errors import RunWarning
from lit_massive.figures import weight_figures
from lit_massive.probes import Needs
from lit_massive.probes.block_stats import BlockStats, massive_mask
from lit_massive.probes.mlp import DownRecord
from lit_massive.results.markdown import cell, markdown_table

# the columns of a row, one per window and block (float32: ids, channels and positions are
# exact below 2**24; values and weights are float32 already)
COLUMNS = (
    "layer",
    "in_value", "in_channel", "in_position", "in_token",
    "out_value", "out_channel", "out_position", "out_token",
    "col", "col_value", "weight", "massive",
)  # fmt: skip
_C = {name: i for i, name in enumerate(COLUMNS)}
TABLE_ROWS = 30  # candidates shown in TensorBoard's table; all are in results.json


class DownRows(SumStatesMetric):
    """One row per window and block (`COLUMNS`): the output projection's largest input and
    output entries, the input channel joined to that output, the weight between them and
    whether that output entry is massive: above the threshold and the ratio x the median
    |value| of the block output (the residual stream it is written to), the criterion used
    everywhere else. Computed on the device; nothing is read back."""

    rows: list[Tensor]  # (n, len(COLUMNS)) float32 each
    count: Tensor  # () int64, windows seen

    def __init__(self, threshold: float, ratio: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold, self.ratio = threshold, ratio
        self.add_state("rows", [], dist_reduce_fx="cat")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, records: list[DownRecord], stats: list[BlockStats], input_ids: Tensor) -> None:
        rows = []
        for i, (r, s) in enumerate(zip(records, stats, strict=True)):
            massive = massive_mask(r.out_value.abs()[:, None], s.median, self.threshold, self.ratio)[:, 0]
            massive &= torch.isfinite(r.out_value) & s.finite
            columns = (
                torch.full_like(r.in_value, i),
                r.in_value, r.in_channel, r.in_position, input_ids.gather(1, r.in_position[:, None]).squeeze(1),
                r.out_value, r.out_channel, r.out_position, input_ids.gather(1, r.out_position[:, None]).squeeze(1),
                r.col, r.col_value, r.weight, massive,
            )  # fmt: skip
            rows.append(torch.stack([c.float() for c in columns], dim=-1))
        self.rows.append(torch.cat(rows))
        self.count += input_ids.shape[0]

    def compute(self) -> dict[str, Tensor]:
        return {"rows": cat_rows(self.rows, len(COLUMNS)), "count": self.count}


def _mean(values: list[float]) -> float:
    """Exactly rounded, so any order of the rows (any number of processes) gives the same."""
    return math.fsum(values) / len(values)


def _mode(values: list[Any]) -> Any:
    """The most frequent value; on a tie the lowest (the same for any order of the rows)."""
    counts = Counter(values)
    return min(counts, key=lambda v: (-counts[v], v))


def _largest(rows: list[dict], side: str, decode: Callable[[int], str]) -> dict[str, Any]:
    """A block's largest |input| or |output| over its windows: the mean largest |value|, where
    it sits most often (channel, position; on a tie the lowest), in how many windows, the mean
    signed value there and the token most often there; windows whose value is not finite
    (half-precision overflow) are left out and counted (all: null values)."""
    finite = [r for r in rows if math.isfinite(r[f"{side}_value"])]  # inf/NaN (overflow): left out, counted
    if not finite:
        keys = ("value", "channel", "position", "token_id", "token", "windows", "fraction", "signed_value")
        return {**dict.fromkeys(keys), "nonfinite_windows": len(rows)}
    where = _mode([(r[f"{side}_channel"], r[f"{side}_position"]) for r in finite])
    there = [r for r in finite if (r[f"{side}_channel"], r[f"{side}_position"]) == where]
    token = _mode([r[f"{side}_token"] for r in there])
    return {
        "nonfinite_windows": len(rows) - len(finite),
        "value": _mean([abs(r[f"{side}_value"]) for r in finite]),
        "channel": where[0],
        "position": where[1],
        "token_id": token,
        "token": decode(token),
        "windows": len(there),
        "fraction": len(there) / len(finite),
        "signed_value": _mean([r[f"{side}_value"] for r in there]),
    }


def _as_dicts(rows: Tensor) -> list[dict]:
    ints = {c for c in COLUMNS if c.endswith(("channel", "position", "token")) or c in ("layer", "col")}
    return [{c: (int(v) if c in ints else v) for c, v in zip(COLUMNS, row, strict=True)} for row in rows.tolist()]


def mlp_down_rows(rows: Tensor, decode: Callable[[int], str]) -> list[dict]:
    """Per block: its output projection's largest |input| and largest |output| (`_largest`),
    and the windows where that output top-1 is massive."""
    by_layer: dict[int, list[dict]] = defaultdict(list)
    for row in _as_dicts(rows):
        by_layer[row["layer"]].append(row)
    out = []
    for layer, block in sorted(by_layer.items()):
        output = _largest(block, "out", decode)
        output["massive_windows"] = sum(r["massive"] > 0 for r in block)
        out.append({"layer": layer, "input": _largest(block, "in", decode), "output": output})
    return out


def super_weight_candidates(rows: Tensor, count: int, decode: Callable[[int], str]) -> list[dict]:
    """Every (layer, row j, col i) where, in at least one window, the output projection's
    largest |output| (at channel j, position p) meets the massive criterion, with i the
    input channel largest at p: the weight W[j, i] as used, the mean input x[p, i], output
    y[p, j] and W[j, i] * x[p, i] (`contribution`; `share` = contribution / output), the
    position and token most often there, and the windows (count and share of all)."""
    groups: dict[tuple[int, int, int], list[dict]] = defaultdict(list)
    for row in _as_dicts(rows):
        if row["massive"] > 0:
            groups[(row["layer"], row["out_channel"], row["col"])].append(row)
    out = []
    for (layer, j, i), hits in groups.items():
        position = _mode([r["out_position"] for r in hits])
        token = _mode([r["out_token"] for r in hits if r["out_position"] == position])
        output = _mean([r["out_value"] for r in hits])
        contribution = _mean([r["weight"] * r["col_value"] for r in hits])
        out.append(
            {
                "layer": layer,
                "row": j,
                "col": i,
                "weight": _mean([r["weight"] for r in hits]),
                "input": _mean([r["col_value"] for r in hits]),
                "output": output,
                "contribution": contribution,
                "share": contribution / output if output else None,
                "position": position,
                "token_id": token,
                "token": decode(token),
                "windows": len(hits),
                "fraction": len(hits) / max(count, 1),
            }
        )
    return sorted(out, key=lambda e: (e["layer"], -e["windows"], e["row"], e["col"]))


def candidates_table(candidates: list[dict]) -> str:
    """The candidates, most frequent first (all of them are in results.json)."""
    shown = sorted(candidates, key=lambda e: (-e["windows"], e["layer"], e["row"], e["col"]))[:TABLE_ROWS]
    rows = [
        [str(e["layer"]), str(e["row"]), str(e["col"]), f"{e['weight']:.4g}", f"{e['input']:.4g}",
         f"{e['output']:.4g}", cell(e["share"], ".3f"), str(e["position"]), f"`{e['token']!r}`",
         f"{e['fraction']:.2f}"]
        for e in shown
    ]  # fmt: skip
    head = ["layer", "row j", "col i", "W[j, i]", "input x_i", "output y_j", "W x_i / y_j", "position", "token",
            "share of windows"]  # fmt: skip
    note = f"\n\n{len(candidates) - len(shown)} more in results.json" if len(candidates) > len(shown) else ""
    return markdown_table(head, rows) + note


@dataclass
class SuperWeightsOptions:
    """Per block, where the MLP output projection's input and output are largest, and the
    super-weight candidates W[j, i] (Yu et al., arXiv 2411.07191) where that output is massive
    (skipped, with a warning, for fused experts: Mixtral, gpt-oss).

    Args:
        enabled: measure it.
    """

    enabled: bool = True


@register_analysis
class SuperWeights(Analysis):
    """Super-weight candidates and, per block, the MLP output projection's largest input and
    output. On by default (`model.analyses.super_weights.enabled`): per block it adds about a third of the
    work of the block-output statistics every run computes (no sort), under 1 % of a
    TinyLlama-sized layer's forward pass on a CPU."""

    name = "super_weights"
    Options = SuperWeightsOptions
    moved = {"super_weights": "enabled"}
    needs = Needs(mlp_down=True)
    keys = ("mlp_down", "super_weights")

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        if setup.layout.mlp_down is None:
            # on by default, so a refusal would stop every Mixtral run: one line instead, keys null
            warnings.warn(
                f"super_weights: skipped for {setup.options['model_name_or_path']!r}: its mixture-of-experts "
                f"MLPs hold every expert's output projection in one fused parameter, with no module to probe; "
                f"mlp_down and super_weights are null (set model.analyses.super_weights.enabled false to silence this)",
                RunWarning,
                stacklevel=2,
            )
            self.needs = Needs()  # no probe: nothing is measured

    def new_metric(self, setup: Setup) -> DownRows | None:
        if setup.layout.mlp_down is None:
            return None
        return DownRows(setup.options["massive_threshold"], setup.options["massive_ratio"])

    def update(self, variant: str, forward: Forward) -> None:
        if variant in self.metrics:
            self.metrics[variant].update(forward.probed.mlp_down, forward.stats, forward.input_ids)

    def section(self, computed: dict[str, Tensor], decode: Callable[[int], str]) -> dict[str, Any]:
        rows, count = computed["rows"], int(computed["count"])
        return {"mlp_down": mlp_down_rows(rows, decode), "super_weights": super_weight_candidates(rows, count, decode)}

    @classmethod
    def publish(cls, out, model: str, name: str, entry: dict[str, Any]) -> None:
        if entry["mlp_down"] is None:  # skipped (Mixtral)
            return
        if entry["super_weights"]:
            out.text(f"{name}/tables/super_weights", candidates_table(entry["super_weights"]))
        fig, _ = weight_figures.mlp_down_figure(entry["mlp_down"], entry["super_weights"], f"{model}: {name}")
        out.figure(f"{name}/figures/mlp_down", fig)
        for row in entry["mlp_down"]:
            out.scalar(f"{name}/mlp_down_input", row["input"]["value"], row["layer"])
            out.scalar(f"{name}/mlp_down_output", row["output"]["value"], row["layer"])

    @classmethod
    def summary_columns(cls, entry: dict[str, Any]) -> list[Column]:
        found = entry.get("super_weights")  # null: the analysis is off
        top = max(found or [], key=lambda e: (e["windows"], abs(e["output"])), default=None)
        if found is None:
            text = "n/a"
        else:
            text = "-" if top is None else f"({top['layer']}, {top['row']}, {top['col']}) {top['weight']:.4g}"
        return [Column(80, "super weight (layer, row, col) W", text)]
