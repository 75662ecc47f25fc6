"""The layer profile: per layer, the mean over windows of the top-k and median of |block
output|, and where the per-window top-1 sits (feature dim, token position, token)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lit_massive.analyses.base import Analysis, Column, Forward, Setup, SumStatesMetric
from lit_massive.analyses.registry import register_analysis
from lit_massive.figures import figures
from lit_massive.probes.block_stats import BlockStats, flat_location
from lit_massive.results.markdown import cell, markdown_table
from lit_massive.variants.specs import BASELINE


class LayerProfile(SumStatesMetric):
    """Per layer: mean over windows of the top-k and median of |block output|; how often
    each feature dim, token position and token holds the per-sequence top-1; and the share
    of sequences whose top-1 is massive.

    A sequence whose block output holds inf/NaN (a half-precision overflow) is left out of
    that layer's statistics and counted instead, so overflow never turns a mean into inf.
    `update` reads nothing back to the host: sequences are masked arithmetically and counts
    are `index_add_`."""

    top_sum: Tensor  # (L, k) float64
    median_sum: Tensor  # (L,) float64
    count: Tensor  # () int64, sequences seen
    finite_count: Tensor  # (L,) int64, sequences whose block output is all finite
    nonfinite_values: Tensor  # (L,) int64, inf/NaN entries in block outputs (see `BlockStats.nonfinite`)
    nonfinite_capped: Tensor  # (L,) int64, sequences whose count is a lower bound
    massive_count: Tensor  # (L,) int64, sequences whose top-1 meets the massive criterion
    locator_overflow: Tensor  # (L,) int64, sequences with more massive entries than candidates
    top1_dim_count: Tensor  # (L, D) int64
    top1_position_count: Tensor  # (L, T_max) int64
    top1_token_count: Tensor  # (L, V) int64

    def __init__(self, n_layer: int, n_embd: int, n_positions: int, vocab_size: int, k: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.k, self.n_embd = k, n_embd
        f64, i64 = torch.float64, torch.int64
        self.add_state("top_sum", torch.zeros(n_layer, k, dtype=f64), dist_reduce_fx="sum")
        self.add_state("median_sum", torch.zeros(n_layer, dtype=f64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=i64), dist_reduce_fx="sum")
        for name in ("finite_count", "nonfinite_values", "nonfinite_capped", "massive_count", "locator_overflow"):
            self.add_state(name, torch.zeros(n_layer, dtype=i64), dist_reduce_fx="sum")
        for name, size in (
            ("top1_dim_count", n_embd),
            ("top1_position_count", n_positions),
            ("top1_token_count", vocab_size),
        ):
            self.add_state(name, torch.zeros(n_layer, size, dtype=i64), dist_reduce_fx="sum")

    def update(self, stats: list[BlockStats], input_ids: Tensor) -> None:
        """Add one batch: `stats[i]` is layer i's `BlockStats` for `input_ids` (B, T)."""
        for i, s in enumerate(stats):
            finite = s.finite
            self.nonfinite_values[i] += s.nonfinite
            self.nonfinite_capped[i] += s.nonfinite_capped
            self.finite_count[i] += finite.sum()
            self.top_sum[i] += torch.where(finite[:, None], s.top[:, : self.k], 0.0).sum(0, dtype=torch.float64)
            self.median_sum[i] += torch.where(finite, s.median, 0.0).sum(dtype=torch.float64)
            self.massive_count[i] += s.massive[:, 0].sum()  # the top-1 is the first candidate
            self.locator_overflow[i] += s.overflow.sum()
            dim, position = flat_location(s.top_index[:, 0], self.n_embd)
            token = input_ids.gather(1, position[:, None]).squeeze(1)
            for state, where in (
                (self.top1_dim_count, dim),
                (self.top1_position_count, position),
                (self.top1_token_count, token),
            ):
                state[i].index_add_(0, where, finite.long())
        self.count += input_ids.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """Means over each layer's finite sequences (NaN where there are none), plus the raw
        top-1 location and overflow counts."""
        n = self.finite_count.to(torch.float64)
        return {
            "top": self.top_sum / n[:, None],
            "median": self.median_sum / n,
            "count": self.count,
            "finite_count": self.finite_count,
            "nonfinite_values": self.nonfinite_values,
            "nonfinite_capped": self.nonfinite_capped,
            "massive_fraction": self.massive_count / n,
            "locator_overflow": self.locator_overflow,
            "top1_dim_count": self.top1_dim_count,
            "top1_position_count": self.top1_position_count,
            "top1_token_count": self.top1_token_count,
        }


def finite(value: float) -> float | None:
    """JSON has no NaN: a statistic that could not be measured is null."""
    return value if math.isfinite(value) else None


def _most_frequent(counts: Tensor, total: int) -> tuple[int, float]:
    """Index with the highest count and its share of `total`; on a tie the lowest index
    (`argmax` returns the first maximum), whatever the number of processes."""
    index = int(counts.argmax())
    return index, float(counts[index]) / max(total, 1)


def profile_layers(profile: dict[str, Tensor], decode: Callable[[int], str]) -> list[dict]:
    """One row per layer: mean top-k and median, and where the per-sequence top-1 sits."""
    rows = []
    for i, (top, median) in enumerate(zip(profile["top"].tolist(), profile["median"].tolist(), strict=True)):
        count = int(profile["finite_count"][i])  # sequences whose block output was finite
        dim, dim_frac = _most_frequent(profile["top1_dim_count"][i], count)
        pos, pos_frac = _most_frequent(profile["top1_position_count"][i], count)
        token, token_frac = _most_frequent(profile["top1_token_count"][i], count)
        top, median = [finite(t) for t in top], finite(median)
        rows.append(
            {
                "layer": i,
                "top": top,
                "median": median,
                "top1_over_median": top[0] / median if top[0] is not None and median else None,
                "massive_fraction": finite(float(profile["massive_fraction"][i])),
                "finite_sequences": count,
                # sequences with more massive entries than model.massive_candidates: the locator
                # kept the largest ones only
                "locator_overflow": int(profile["locator_overflow"][i]),
                # inf/NaN entries, counted among each sequence's massive_candidates + 1 largest
                # |values|; not exact (a lower bound) where a sequence had that many
                "nonfinite_values": int(profile["nonfinite_values"][i]),
                "nonfinite_values_exact": int(profile["nonfinite_capped"][i]) == 0,
                "top1_dim": dim,
                "top1_dim_fraction": dim_frac,
                "top1_position": pos,
                "top1_position_fraction": pos_frac,
                "top1_token_id": token,
                "top1_token": decode(token),
                "top1_token_fraction": token_frac,
            }
        )
    return rows


def first_massive_layer(layers: list[dict]) -> int | None:
    """First layer where most sequences have a massive top-1 (the paper's criterion)."""
    return next((row["layer"] for row in layers if (row["massive_fraction"] or 0.0) >= 0.5), None)


def pct(new: float | None, old: float | None) -> float | None:
    """100 x (new - old) / old, null where either is unmeasured or old is 0."""
    return 100.0 * (new - old) / old if new is not None and old else None


def change_vs_baseline(layers: list[dict], baseline: list[dict]) -> dict:
    """Per layer, 100 x (variant - baseline) / baseline for each top-k and the median, and
    each of those averaged over layers."""
    change: dict = {}
    for j in range(len(baseline[0]["top"])):
        change[f"top{j + 1}_pct"] = [pct(v["top"][j], b["top"][j]) for v, b in zip(layers, baseline, strict=True)]
    change["median_pct"] = [pct(v["median"], b["median"]) for v, b in zip(layers, baseline, strict=True)]
    change["mean_over_layers"] = {
        key: sum(values) / len(values) if None not in values else None for key, values in change.items()
    }
    return change


def per_layer_changes(change: dict) -> dict[str, list[float | None]]:
    """The per-layer % change lists of a `change_vs_baseline` (top1_pct ... median_pct)."""
    return {key: values for key, values in change.items() if key.endswith("_pct") and isinstance(values, list)}


def largest_change(change: dict) -> tuple[str, int, float] | None:
    """(statistic, layer, % change) with the largest |change| over every statistic and layer."""
    found = [
        (key.removesuffix("_pct"), i, p)
        for key, values in per_layer_changes(change).items()
        for i, p in enumerate(values)
        if p is not None
    ]
    return max(found, key=lambda f: abs(f[2]), default=None)


def peak_ratio(layers: list[dict]) -> tuple[float, int] | None:
    """The largest top-1 / median over layers, and its layer."""
    found = [(r["top1_over_median"], r["layer"]) for r in layers if r["top1_over_median"] is not None]
    return max(found, default=None)


def _layer(layer: int | None) -> str:
    return "-" if layer is None else str(layer)


def change_table(variants: dict[str, dict]) -> str:
    """Top-1 and median % change per layer, one column pair per variant, mean row last."""
    names = [n for n, v in variants.items() if "change_vs_baseline" in v]
    keys = ("top1_pct", "median_pct")
    head = ["layer", *(f"{n} {s} %" for n in names for s in ("top-1", "median"))]
    changes = [variants[n]["change_vs_baseline"] for n in names]
    rows = [
        [str(i), *(cell(c[key][i], "+.2f") for c in changes for key in keys)]
        for i in range(len(variants[BASELINE]["layers"]))
    ]
    rows.append(["mean", *(cell(c["mean_over_layers"][key], "+.2f") for c in changes for key in keys)])
    return markdown_table(head, rows)


def profile_table(layers: list[dict]) -> str:
    """The layer profile as a markdown table (TensorBoard's text tab renders it)."""
    k = len(layers[0]["top"])
    head = ["layer", *(f"top-{j + 1}" for j in range(k)), "median", "top-1 / median", "massive (share)",
            "top-1 dim (share)", "position (share)", "token (share)"]  # fmt: skip
    rows = [
        [
            str(r["layer"]),
            *(cell(t) for t in r["top"]),
            cell(r["median"]),
            cell(r["top1_over_median"], ".1f"),
            cell(r["massive_fraction"], ".2f"),
            f"{r['top1_dim']} ({r['top1_dim_fraction']:.2f})",
            f"{r['top1_position']} ({r['top1_position_fraction']:.2f})",
            f"`{r['top1_token']!r}` ({r['top1_token_fraction']:.2f})",
        ]
        for r in layers
    ]
    return markdown_table(head, rows)


@register_analysis
class LayerProfileAnalysis(Analysis):
    """Experiment 2 and 4 of the original study: the layer profile of every variant and its
    % change against the baseline."""

    name = "layer_profile"
    keys = ("num_sequences", "first_massive_layer", "first_nonfinite_layer", "layers")

    def new_metric(self, setup: Setup) -> LayerProfile:
        lay = setup.layout
        return LayerProfile(lay.n_layer, lay.n_embd, lay.n_positions, lay.vocab_size, k=setup.options["top_k"])

    def update(self, variant: str, forward: Forward) -> None:
        self.metrics[variant].update(forward.stats, forward.input_ids)

    def section(self, computed: dict[str, Tensor], decode: Callable[[int], str]) -> dict[str, Any]:
        layers = profile_layers(computed, decode)
        overflow = [row["layer"] for row in layers if row["nonfinite_values"]]
        return {
            "num_sequences": int(computed["count"]),
            "first_massive_layer": first_massive_layer(layers),
            "first_nonfinite_layer": overflow[0] if overflow else None,
            "layers": layers,
        }

    @classmethod
    def change(cls, entry: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
        return change_vs_baseline(entry["layers"], baseline["layers"])

    @classmethod
    def publish(cls, out, model: str, name: str, entry: dict[str, Any]) -> None:
        layers = entry["layers"]
        out.figure(f"{name}/figures/layer_profile", figures.layer_profile_figure(layers, f"{model}: {name}")[0])
        out.text(f"{name}/tables/layer_profile", profile_table(layers))
        for row in layers:  # curves whose x axis (step) is the layer
            for j, value in enumerate(row["top"]):
                out.scalar(f"{name}/profile/top{j + 1}", value, row["layer"])
            out.scalar(f"{name}/profile/median", row["median"], row["layer"])
        for key, values in per_layer_changes(entry.get("change_vs_baseline", {})).items():
            for i, value in enumerate(values):
                out.scalar(f"{name}/change/{key}", value, i)

    @classmethod
    def publish_run(cls, out, model: str, results) -> None:
        variants, sweep = results.variants, results.sweep
        out.chart_layout(cls._charts(variants))
        if len(variants) == 1:
            return
        profiles = {n: v["layers"] for n, v in variants.items()}
        out.figure("compare/figures/profiles", figures.profiles_figure(profiles, f"{model}: all variants")[0])
        changes = {n: v["change_vs_baseline"] for n, v in variants.items() if n != BASELINE}
        top1 = {n: c["top1_pct"] for n, c in changes.items()}
        out.figure("compare/figures/top1_change", figures.change_figure(top1, f"{model}: top-1 vs baseline")[0])
        title = f"{model}: % change vs baseline, every statistic"
        out.figure("compare/figures/change_heatmap", figures.change_heatmap(changes, title)[0])
        out.text("compare/tables/change", change_table(variants))
        if sweep:
            keys = list(per_layer_changes(changes[sweep["variants"][0]]))
            mean = {k: [changes[n]["mean_over_layers"][k] for n in sweep["variants"]] for k in keys}
            title = f"{model}: cumulative pruning ({sweep['order']})"
            out.figure("sweep/figures/change_vs_k", figures.sweep_figure(sweep["k"], mean, title)[0])

    @staticmethod
    def _charts(variants: dict[str, dict]) -> dict[str, dict[str, list]]:
        """TensorBoard's Custom Scalars tab: charts by tag pattern, the same in every run (the
        tab merges the layouts of all runs, so no chart names a run's variants). Every variant
        is a TensorBoard run of its own (`report.publisher.VariantRuns`), so each chart draws
        every variant of every selected run, each in its own colour."""
        k = len(variants[BASELINE]["layers"][0]["top"])
        stats = [*(f"top{j + 1}" for j in range(k)), "median"]
        # TensorBoard matches a chart's patterns from the tag's start: profile/top1 in RUN/variants/VARIANT
        profile = {f"{s} of |block output| per layer (x: layer)": ["Multiline", [f"^profile/{s}$"]] for s in stats}
        change = {f"{s} % change vs baseline per layer (x: layer)": ["Multiline", [f"^change/{s}_pct$"]] for s in stats}
        return {"layer profile, every variant": profile, "% change vs baseline, every variant": change}

    @classmethod
    def columns(cls, entry: dict[str, Any]) -> list[Column]:
        change = entry.get("change_vs_baseline")
        peak, largest = peak_ratio(entry["layers"]), largest_change(change) if change else None
        where = "-" if largest is None else f"{largest[2]:+.2f} ({largest[0]}, {largest[1]})"
        return [
            Column(10, "first massive", _layer(entry["first_massive_layer"])),
            Column(20, "peak top-1/median (layer)", "-" if peak is None else f"{peak[0]:.1f} ({peak[1]})"),
            Column(40, "top-1 %", "-" if change is None else cell(change["mean_over_layers"]["top1_pct"], "+.2f")),
            Column(60, "largest % (stat, layer)", where),
        ]  # fmt: skip

    @classmethod
    def summary_columns(cls, entry: dict[str, Any]) -> list[Column]:
        mean = entry.get("change_vs_baseline", {}).get("mean_over_layers", {})
        return [
            Column(40, "mean top-1 change %", cell(mean.get("top1_pct"), "+.3f")),
            Column(50, "first massive layer", _layer(entry["first_massive_layer"])),
            Column(60, "first inf/NaN layer", _layer(entry["first_nonfinite_layer"])),
        ]

    @classmethod
    def warnings(cls, name: str, entry: dict[str, Any]) -> list[str]:
        bad = [
            (row["layer"], n if row.get("nonfinite_values_exact", True) else f">={n}")
            for row in entry["layers"]
            if (n := row["nonfinite_values"])
        ]
        if not bad:
            return []
        return [
            f"{name}: inf/NaN (precision overflow?) in block outputs (layer, values): {bad}. Those "
            f"sequences are left out of that layer's statistics; see results.json"
        ]
