"""Write a finished run: results.json, TensorBoard scalars / figures / tables, PNG copies.

Reads only the module's `RunResults`; only rank 0 writes. The CLI registers `RunReport`.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure

from lit_massive import figures
from lit_massive.errors import InputError
from lit_massive.results import FeatureViewResult, RunResults
from lit_massive.tables import (
    BOTTOM_HEADS,
    TOP_HEADS,
    change_table,
    heads_table,
    locator_table,
    profile_table,
    ranked_heads,
    summary_table,
)
from lit_massive.variants import BASELINE

RESULTS = "results.json"
COMPONENT_FIGURES = 3  # (dim, position) pairs with the largest value get a components figure


def ensure_new_run_dir(run_dir: Path, files: tuple[str, ...] = (RESULTS, "config.yaml")) -> None:
    """Refuse a run directory that already holds a run, before anything is written to it."""
    for name in files:
        if (run_dir / name).exists():
            raise InputError(
                f"{run_dir / name} already exists; give the run a new directory (leave "
                f"trainer.logger's version unset so each run gets the next version_N)"
            )


def warn_overflow(results: dict) -> None:
    """One warning per variant whose block outputs or token NLLs overflowed: such numbers
    are left out of the statistics, which a user would otherwise not notice."""
    for name, variant in results["variants"].items():
        bad = [(row["layer"], row["nonfinite_values"]) for row in variant["layers"] if row["nonfinite_values"]]
        if bad or variant["nonfinite_tokens"]:
            warnings.warn(
                f"{name}: inf/NaN (precision overflow?) in block outputs (layer, values): {bad}; "
                f"in {variant['nonfinite_tokens']} token NLLs. Those sequences are left out of "
                f"that layer's statistics, and perplexity is null; see results.json",
                stacklevel=3,
            )
        cut = [(row["layer"], row["locator_overflow"]) for row in variant["layers"] if row["locator_overflow"]]
        if cut or variant.get("components_overflow"):
            warnings.warn(
                f"{name}: more massive entries per sequence than model.massive_candidates in blocks "
                f"(layer, sequences): {cut}; the locator and components kept the largest ones only. "
                f"Raise model.massive_candidates to record them all",
                stacklevel=3,
            )


class Publisher:
    """Sends each figure to TensorBoard (when there is a TensorBoard logger) and to
    RUN/figures/ as a PNG, and each markdown table to TensorBoard's text tab."""

    def __init__(self, run_dir: Path, writer) -> None:
        self.run_dir, self.writer = run_dir, writer
        (run_dir / "figures").mkdir(exist_ok=True)

    def figure(self, tag: str, fig: Figure) -> None:
        fig.savefig(self.run_dir / "figures" / f"{tag.replace('/figures/', '_')}.png", dpi=120)
        if self.writer is not None:
            self.writer.add_figure(tag, fig, close=False)

    def text(self, tag: str, markdown: str) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, markdown)

    def scalar(self, tag: str, value: float | None, step: int) -> None:
        if self.writer is not None and value is not None:  # null: not measured (overflow)
            self.writer.add_scalar(tag, value, global_step=step)

    def variant(self, model: str, name: str, variant: dict) -> None:
        layers = variant["layers"]
        self.figure(f"{name}/figures/layer_profile", figures.layer_profile_figure(layers, f"{model}: {name}")[0])
        self.text(f"{name}/tables/layer_profile", profile_table(layers))
        for row in layers:  # curves whose x axis (step) is the block
            for j, value in enumerate(row["top"]):
                self.scalar(f"{name}/profile/top{j + 1}", value, row["layer"])
            self.scalar(f"{name}/profile/median", row["median"], row["layer"])
        for key, values in variant.get("change_vs_baseline", {}).items():
            if isinstance(values, list):  # top1_pct ... median_pct per block
                for i, pct in enumerate(values):
                    self.scalar(f"{name}/change/{key}", pct, i)
        self.scalar(f"{name}/perplexity", variant["perplexity"], 0)
        if variant["head_scores"] is not None:
            ranked = ranked_heads(variant["head_scores"])
            shown = ranked[:TOP_HEADS] + ranked[-BOTTOM_HEADS:]
            self.figure(
                f"{name}/figures/head_scores",
                figures.head_heatmap(variant["head_scores"], f"{model}: {name}", variant["pruned_heads"])[0],
            )
            self.figure(
                f"{name}/figures/head_ranking",
                figures.head_ranking_figure(shown, TOP_HEADS, f"{model}: {name}")[0],
            )
            self.text(f"{name}/tables/heads", heads_table(ranked))
            # attention on the window's massive tokens (position 0 and any later ones)
            massive = variant["massive_token_scores"]
            label = "mean attention on massive tokens"
            self.figure(
                f"{name}/figures/massive_token_scores",
                figures.head_heatmap(massive, f"{model}: {name}", variant["pruned_heads"], label)[0],
            )
            self.text(
                f"{name}/tables/heads_massive_tokens", heads_table(ranked_heads(massive), "massive-token attention")
            )
            share = variant["attention_to_massive"]
            self.figure(
                f"{name}/figures/attention_to_massive",
                figures.attention_to_massive_figure(share, f"{model}: {name}")[0],
            )
            for layer, value in enumerate(share):
                self.scalar(f"{name}/attention_to_massive", value, layer)
            self.figure(f"{name}/figures/received", figures.received_figure(variant["received"], f"{model}: {name}")[0])
        if variant["massive"]:
            self.text(f"{name}/tables/massive", locator_table(variant["massive"]))
        by_location: dict[tuple[int, int], list[dict]] = {}
        for entry in variant["components"] or []:
            by_location.setdefault((entry["dim"], entry["position"]), []).append(entry)
        largest = sorted(
            by_location.items(), key=lambda kv: -max(abs(e["resid_in"] + e["attn"] + e["mlp"]) for e in kv[1])
        )
        # the token at each located (dim, position): position 0 may be BOS, later ones "." or "\n"
        token_at = {
            (e["dim"], e["position"]): e["token"] for e in sorted(variant["massive"], key=lambda e: e["fraction"])
        }
        for (dim, position), entries in largest[:COMPONENT_FIGURES]:
            token = token_at.get((dim, position))
            title = f"{model}: {name}, dim {dim}, position {position}" + (f" ({token!r})" if token is not None else "")
            self.figure(
                f"{name}/figures/components_dim{dim}_pos{position}",
                figures.components_figure(entries, title)[0],
            )

    def comparison(self, model: str, variants: dict[str, dict], sweep: dict | None) -> None:
        self.text("summary/table", summary_table(variants))
        if len(variants) == 1:
            return
        profiles = {n: v["layers"] for n, v in variants.items()}
        self.figure("compare/figures/profiles", figures.profiles_figure(profiles, f"{model}: all variants")[0])
        changes = {n: v["change_vs_baseline"] for n, v in variants.items() if n != BASELINE}
        top1 = {n: c["top1_pct"] for n, c in changes.items()}
        self.figure("compare/figures/top1_change", figures.change_figure(top1, f"{model}: top-1 vs baseline")[0])
        title = f"{model}: % change vs baseline, every statistic"
        self.figure("compare/figures/change_heatmap", figures.change_heatmap(changes, title)[0])
        self.text("compare/tables/change", change_table(variants))
        if sweep:
            keys = [k for k, v in changes[sweep["variants"][0]].items() if isinstance(v, list)]
            mean = {k: [changes[n]["mean_over_layers"][k] for n in sweep["variants"]] for k in keys}
            title = f"{model}: cumulative pruning ({sweep['order']})"
            self.figure("sweep/figures/change_vs_k", figures.sweep_figure(sweep["k"], mean, title)[0])

    def chart_layout(self, variants: dict[str, dict]) -> None:
        """TensorBoard's Custom Scalars tab: one chart per variant with its top-1 .. top-k and
        median against block, and one with its % changes vs the baseline."""
        if self.writer is None:
            return
        profile, change = {}, {}
        for name, v in variants.items():
            k = len(v["layers"][0]["top"])
            tags = [*(f"{name}/profile/top{j + 1}" for j in range(k)), f"{name}/profile/median"]
            profile[name] = ["Multiline", [f"^{re.escape(t)}$" for t in tags]]  # a chart's tags are regexes
            keys = [key for key, values in v.get("change_vs_baseline", {}).items() if isinstance(values, list)]
            if keys:
                change[name] = ["Multiline", [f"^{re.escape(f'{name}/change/{key}')}$" for key in keys]]
        layout = {"profile per block (x = block; smoothing 0, log y)": profile}
        if change:
            layout["% change vs baseline per block (x = block; smoothing 0)"] = change
        self.writer.add_custom_scalars(layout)

    def feature_view(self, model: str, view: FeatureViewResult, threshold: float, ratio: float) -> None:
        for layer, dims in view.massive_dims.items():
            title = f"{model}: block {layer}, {view.text!r}"
            note = None
            if dims:
                title += f", massive dims {dims}"
            else:  # the block may be the windows' first massive one while this short text stays below
                values = torch.tensor(view.values[layer])
                peak, median = float(values.max()), float(values.flatten().median())
                times = f"{peak / median:.0f}x" if median > 0 else "inf x"
                note = (
                    f"nothing massive in this text: its largest |value| is {peak:.4g} = {times} the median, "
                    f"the criterion is > {threshold:g} and > {ratio:g}x; the 3 largest dims are labelled"
                )
            fig, _ = figures.feature_view_figure(view.values[layer], view.tokens, dims, title, note)
            self.figure(f"feature_view/figures/layer{layer}", fig)


class RunReport(Callback):
    """Writes the run directory's results at the end of validation, from the module's
    `results` (a `RunResults`)."""

    def __init__(self) -> None:
        self.run_dir: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # trainer.log_dir is a collective under several processes: read it on every rank
        self.run_dir = Path(trainer.log_dir)
        # config.yaml may already be this run's own (SaveConfigCallback writes it in its setup)
        ensure_new_run_dir(self.run_dir, files=(RESULTS,))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = getattr(pl_module, "results", None)
        if trainer.is_global_zero and results is not None:
            writer = next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
            self.write(results, writer)
        # the other ranks wait, so none exits while rank 0 still holds the process group
        trainer.strategy.barrier("lit_massive.report")

    def write(self, results: RunResults, writer=None) -> None:
        """results.json, then TensorBoard (`writer`, if any) and PNG figures and tables."""
        content = results.to_json()
        warn_overflow(content)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / RESULTS, "x", encoding="utf-8") as f:
            json.dump(content, f, indent=2)
        publish = Publisher(self.run_dir, writer)
        model = results.model["name_or_path"]
        for name, variant in results.variants.items():
            publish.variant(model, name, variant)
        publish.comparison(model, results.variants, results.sweep)
        publish.chart_layout(results.variants)
        if results.feature_view is not None:
            criterion = results.model["massive_threshold"], results.model["massive_ratio"]
            publish.feature_view(model, results.feature_view, *criterion)
        if writer is not None:
            writer.flush()
