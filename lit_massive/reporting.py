"""Write a finished run: results.json, TensorBoard scalars / figures / tables, PNG copies.

Reads only what the LightningModule computed; only rank 0 writes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure

from lit_massive import figures
from lit_massive.errors import InputError
from lit_massive.functional import massive_dims
from lit_massive.results import variant_results
from lit_massive.variants import BASELINE, rank_heads

RESULTS = "results.json"
TOP_HEADS, BOTTOM_HEADS = 10, 5
LOCATOR_ROWS, COMPONENT_FIGURES = 50, 3


def ensure_new_run_dir(run_dir: Path, files: tuple[str, ...] = (RESULTS, "config.yaml")) -> None:
    """Refuse a run directory that already holds a run, before anything is written to it."""
    for name in files:
        if (run_dir / name).exists():
            raise InputError(
                f"{run_dir / name} already exists; give the run a new directory (leave "
                f"trainer.logger's version unset so each run gets the next version_N)"
            )


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def _num(value: float | None, fmt: str = ".4g") -> str:
    return "n/a" if value is None else format(value, fmt)


def profile_table(layers: list[dict]) -> str:
    """The layer profile as a markdown table (TensorBoard's text tab renders it)."""
    k = len(layers[0]["top"])
    head = [
        "block",
        *(f"top-{j + 1}" for j in range(k)),
        "median",
        "top-1 / median",
        "massive (share)",
        "top-1 dim (share)",
        "position (share)",
        "token (share)",
    ]
    rows = [
        [
            str(r["layer"]),
            *(_num(t) for t in r["top"]),
            _num(r["median"]),
            _num(r["top1_over_median"], ".1f"),
            _num(r["massive_fraction"], ".2f"),
            f"{r['top1_dim']} ({r['top1_dim_fraction']:.2f})",
            f"{r['top1_position']} ({r['top1_position_fraction']:.2f})",
            f"`{r['top1_token']!r}` ({r['top1_token_fraction']:.2f})",
        ]
        for r in layers
    ]
    return markdown_table(head, rows)


def ranked_heads(scores: list[list[float]]) -> list[tuple[int, int, float]]:
    """(layer, head, score), highest score first; ties in (layer, head) order."""
    table = torch.tensor([[float("nan") if v is None else v for v in row] for row in scores])
    return [(layer, head, float(table[layer, head])) for layer, head in rank_heads(table, "top")]


def heads_table(ranked: list[tuple[int, int, float]]) -> str:
    top = [[str(i + 1), str(layer), str(head), f"{s:.4f}"] for i, (layer, head, s) in enumerate(ranked[:TOP_HEADS])]
    n = len(ranked)
    bottom = [
        [str(n - BOTTOM_HEADS + i + 1), str(layer), str(head), f"{s:.4f}"]
        for i, (layer, head, s) in enumerate(ranked[-BOTTOM_HEADS:])
    ]
    return (
        f"**Top {TOP_HEADS} heads by first-token attention**\n\n"
        + markdown_table(["rank", "layer", "head", "score"], top)
        + f"\n\n**Bottom {BOTTOM_HEADS}**\n\n"
        + markdown_table(["rank", "layer", "head", "score"], bottom)
    )


def change_table(variants: dict[str, dict]) -> str:
    """Top-1 and median % change per block, one column pair per variant, mean row last."""
    names = [n for n, v in variants.items() if "change_vs_baseline" in v]
    n_layer = len(variants[BASELINE]["layers"])
    head = ["block", *(f"{n} {s} %" for n in names for s in ("top-1", "median"))]
    rows = [
        [
            str(i),
            *(
                _num(variants[n]["change_vs_baseline"][key][i], "+.2f")
                for n in names
                for key in ("top1_pct", "median_pct")
            ),
        ]
        for i in range(n_layer)
    ]
    rows.append(
        [
            "mean",
            *(
                _num(variants[n]["change_vs_baseline"]["mean_over_layers"][key], "+.2f")
                for n in names
                for key in ("top1_pct", "median_pct")
            ),
        ]
    )
    return markdown_table(head, rows)


def locator_table(massive: list[dict]) -> str:
    """The located massive activations, largest |value| first (all of them in results.json)."""
    shown = sorted(massive, key=lambda e: -abs(e["value"]))[:LOCATOR_ROWS]
    rows = [
        [
            str(e["layer"]),
            str(e["dim"]),
            str(e["position"]),
            f"`{e['token']!r}`",
            f"{e['value']:.4g}",
            f"{e['fraction']:.2f}",
        ]
        for e in shown
    ]
    note = f"\n\n{len(massive) - len(shown)} more in results.json" if len(massive) > len(shown) else ""
    return markdown_table(["block", "dim", "position", "token", "mean value", "share of windows"], rows) + note


def summary_table(variants: dict[str, dict]) -> str:
    """One row per variant: what it prunes, perplexity, and the mean change vs baseline."""
    head = [
        "variant",
        "pruned heads",
        "perplexity",
        "perplexity change %",
        "mean top-1 change %",
        "first massive block",
        "first inf/NaN block",
    ]
    rows = []
    for name, v in variants.items():
        change = v.get("change_vs_baseline", {})
        rows.append(
            [
                name,
                " ".join(f"({layer},{head})" for layer, head in v["pruned_heads"]) or "-",
                _num(v["perplexity"], ".4f"),
                _num(change.get("perplexity_pct"), "+.3f"),
                _num(change.get("mean_over_layers", {}).get("top1_pct"), "+.3f"),
                str(v["first_massive_layer"]),
                str(v["first_nonfinite_layer"]),
            ]
        )
    return markdown_table(head, rows)


def warn_overflow(results: dict) -> None:
    for name, variant in results["variants"].items():
        bad = [(row["layer"], row["nonfinite_values"]) for row in variant["layers"] if row["nonfinite_values"]]
        if bad or variant["nonfinite_tokens"]:
            warnings.warn(
                f"{name}: inf/NaN (precision overflow?) in block outputs (layer, values): {bad}; "
                f"in {variant['nonfinite_tokens']} token NLLs. Those sequences are left out of "
                f"that layer's statistics, and perplexity is null; see results.json",
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
        for i, pct in enumerate(variant.get("change_vs_baseline", {}).get("top1_pct", [])):
            self.scalar(f"{name}/change/top1_pct", pct, i)
        self.scalar(f"{name}/perplexity", variant["perplexity"], 0)
        if variant["head_scores"] is not None:
            ranked = ranked_heads(variant["head_scores"])
            shown = ranked[:TOP_HEADS] + ranked[-BOTTOM_HEADS:]
            self.figure(
                f"{name}/figures/head_scores",
                figures.head_heatmap(variant["head_scores"], f"{model}: {name}")[0],
            )
            self.figure(
                f"{name}/figures/head_ranking",
                figures.head_ranking_figure(shown, TOP_HEADS, f"{model}: {name}")[0],
            )
            self.text(f"{name}/tables/heads", heads_table(ranked))
        if variant["massive"]:
            self.text(f"{name}/tables/massive", locator_table(variant["massive"]))
        by_location: dict[tuple[int, int], list[dict]] = {}
        for entry in variant["components"] or []:
            by_location.setdefault((entry["dim"], entry["position"]), []).append(entry)
        largest = sorted(
            by_location.items(), key=lambda kv: -max(abs(e["resid_in"] + e["attn"] + e["mlp"]) for e in kv[1])
        )
        for (dim, position), entries in largest[:COMPONENT_FIGURES]:
            title = f"{model}: {name}, dim {dim}, position {position}"
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
        changes = {n: v["change_vs_baseline"]["top1_pct"] for n, v in variants.items() if n != BASELINE}
        self.figure("compare/figures/top1_change", figures.change_figure(changes, f"{model}: top-1 vs baseline")[0])
        self.text("compare/tables/change", change_table(variants))
        if sweep:
            mean = [variants[n]["change_vs_baseline"]["mean_over_layers"]["top1_pct"] for n in sweep["variants"]]
            title = f"{model}: cumulative pruning ({sweep['order']})"
            self.figure("sweep/figures/top1_change_vs_k", figures.sweep_figure(sweep["k"], mean, title)[0])

    def feature_view(self, model: str, view: dict, values: dict[int, list[list[float]]]) -> None:
        for layer, dims in view["massive_dims"].items():
            title = f"{model}: block {layer}, " + (f"massive dims {dims}" if dims else "no massive activation")
            fig, _ = figures.feature_view_figure(values[layer], view["tokens"], dims, title)
            self.figure(f"feature_view/figures/layer{layer}", fig)


class RunReport(Callback):
    """Writes the run directory's results at the end of validation."""

    def __init__(self) -> None:
        self.run_dir: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # trainer.log_dir is a collective under several processes: read it on every rank
        self.run_dir = Path(trainer.log_dir)
        # config.yaml may already be this run's own (SaveConfigCallback runs first)
        ensure_new_run_dir(self.run_dir, files=(RESULTS,))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and pl_module.results is not None:
            self.write(trainer, pl_module)
        # the other ranks wait, so none exits while rank 0 still holds the process group
        trainer.strategy.barrier("lit_massive.report")

    def write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """results.json, then TensorBoard and PNG figures and tables (rank 0 only)."""
        results = self.collect(trainer, pl_module)
        values = self.feature_view(trainer, pl_module, results)
        warn_overflow(results)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / RESULTS, "x", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        writer = next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        publish = Publisher(self.run_dir, writer)
        model = results["model"]["name_or_path"]
        for name, variant in results["variants"].items():
            publish.variant(model, name, variant)
        publish.comparison(model, results["variants"], results["sweep"])
        if values:
            publish.feature_view(model, results["feature_view"], values)
        if writer is not None:
            writer.flush()

    @staticmethod
    def feature_view(trainer: L.Trainer, pl_module: L.LightningModule, results: dict) -> dict[int, list]:
        """Experiment 1: |block output| of the configured text at the configured blocks, or
        at the first block with a massive activation (else the largest top-1 / median).
        Adds `feature_view` to `results`; returns the values to plot per block."""
        view, h = pl_module.feature_view, pl_module.hparams
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if view is None or tokenizer is None:
            return {}
        ids = tokenizer(view.text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        layers = view.layers
        if layers is None:
            baseline = results["variants"][BASELINE]
            ratios = [row["top1_over_median"] or 0.0 for row in baseline["layers"]]
            first = baseline["first_massive_layer"]
            layers = [first if first is not None else max(range(len(ratios)), key=ratios.__getitem__)]
        outputs = pl_module.block_outputs_of(ids)
        values = {layer: outputs[layer].abs() for layer in layers}
        results["feature_view"] = {
            "text": view.text,
            "tokens": [tokenizer.decode([int(i)]) for i in ids],
            "massive_dims": {
                layer: massive_dims(x, h.massive_threshold, h.massive_ratio) for layer, x in values.items()
            },
        }
        return {layer: x.tolist() for layer, x in values.items()}

    @staticmethod
    def collect(trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        datamodule = trainer.datamodule
        tokenizer = getattr(datamodule, "tokenizer", None)
        decode = (lambda i: tokenizer.decode([i])) if tokenizer is not None else str
        baseline = variant_results(pl_module.results[BASELINE], decode)
        variants = {BASELINE: baseline}
        for name, computed in pl_module.results.items():
            if name != BASELINE:
                variants[name] = variant_results(computed, decode, baseline=baseline)
        return {
            "model": pl_module.describe(),
            "data": datamodule.describe() if hasattr(datamodule, "describe") else None,
            "precision": str(trainer.precision),
            "world_size": trainer.world_size,
            "timing": pl_module.timing,
            "sweep": pl_module.describe_sweep(),
            "variants": variants,
        }
