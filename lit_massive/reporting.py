"""Write a finished run: results.json, TensorBoard scalars / figures / tables, PNG copies.

Reads only what the LightningModule computed; only rank 0 writes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure

from lit_massive import figures
from lit_massive.errors import InputError
from lit_massive.results import variant_results
from lit_massive.variants import BASELINE

RESULTS = "results.json"
TOP_HEADS, BOTTOM_HEADS = 10, 5


def ensure_new_run_dir(run_dir: Path, files: tuple[str, ...] = (RESULTS, "config.yaml")) -> None:
    """Refuse a run directory that already holds a run, before anything is written to it."""
    for name in files:
        if (run_dir / name).exists():
            raise InputError(
                f"{run_dir / name} already exists; give the run a new directory (leave "
                f"trainer.logger's version unset so each run gets the next version_N)"
            )


def _table(head: list[str], rows: list[list[str]]) -> str:
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
    return _table(head, rows)


def ranked_heads(scores: list[list[float]]) -> list[tuple[int, int, float]]:
    """(layer, head, score), highest score first; ties in (layer, head) order."""
    flat = [(layer, head, s) for layer, row in enumerate(scores) for head, s in enumerate(row)]
    return sorted(flat, key=lambda t: -t[2])


def heads_table(ranked: list[tuple[int, int, float]]) -> str:
    top = [
        [str(i + 1), str(layer), str(head), f"{s:.4f}"]
        for i, (layer, head, s) in enumerate(ranked[:TOP_HEADS])
    ]
    n = len(ranked)
    bottom = [
        [str(n - BOTTOM_HEADS + i + 1), str(layer), str(head), f"{s:.4f}"]
        for i, (layer, head, s) in enumerate(ranked[-BOTTOM_HEADS:])
    ]
    return (
        f"**Top {TOP_HEADS} heads by first-token attention**\n\n"
        + _table(["rank", "layer", "head", "score"], top)
        + f"\n\n**Bottom {BOTTOM_HEADS}**\n\n"
        + _table(["rank", "layer", "head", "score"], bottom)
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
    return _table(head, rows)


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
    return _table(head, rows)


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
        if not trainer.is_global_zero or pl_module.results is None:
            return
        results = self.collect(trainer, pl_module)
        for name, variant in results["variants"].items():
            bad = [
                (row["layer"], row["nonfinite_values"])
                for row in variant["layers"]
                if row["nonfinite_values"]
            ]
            if bad or variant["nonfinite_tokens"]:
                warnings.warn(
                    f"{name}: inf/NaN (precision overflow?) in block outputs (layer, values): {bad}; "
                    f"in {variant['nonfinite_tokens']} token NLLs. Those sequences are left out of "
                    f"that layer's statistics, and perplexity is null; see results.json",
                    stacklevel=2,
                )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / RESULTS, "x", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        writer = next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        (self.run_dir / "figures").mkdir(exist_ok=True)

        def figure(tag: str, fig: Figure) -> None:
            fig.savefig(self.run_dir / "figures" / f"{tag.replace('/figures/', '_')}.png", dpi=120)
            if writer is not None:
                writer.add_figure(tag, fig, close=False)

        def text(tag: str, markdown: str) -> None:
            if writer is not None:
                writer.add_text(tag, markdown)

        model = results["model"]["name_or_path"]
        variants = results["variants"]
        for name, variant in variants.items():
            layers = variant["layers"]
            figure(
                f"{name}/figures/layer_profile", figures.layer_profile_figure(layers, f"{model}: {name}")[0]
            )
            text(f"{name}/tables/layer_profile", profile_table(layers))
            if writer is not None:
                for row in layers:
                    stats = {f"top{j + 1}": v for j, v in enumerate(row["top"])} | {"median": row["median"]}
                    for stat, value in stats.items():
                        if value is not None:  # null: overflowed, not measured
                            writer.add_scalar(f"{name}/profile/{stat}", value, global_step=row["layer"])
                if variant["perplexity"] is not None:
                    writer.add_scalar(f"{name}/perplexity", variant["perplexity"], global_step=0)
                for i, pct in enumerate(variant.get("change_vs_baseline", {}).get("top1_pct", [])):
                    if pct is not None:
                        writer.add_scalar(f"{name}/change/top1_pct", pct, global_step=i)
            if variant["head_scores"] is not None:
                ranked = ranked_heads(variant["head_scores"])
                shown = ranked[:TOP_HEADS] + ranked[-BOTTOM_HEADS:]
                figure(
                    f"{name}/figures/head_scores",
                    figures.head_heatmap(variant["head_scores"], f"{model}: {name}")[0],
                )
                figure(
                    f"{name}/figures/head_ranking",
                    figures.head_ranking_figure(shown, TOP_HEADS, f"{model}: {name}")[0],
                )
                text(f"{name}/tables/heads", heads_table(ranked))
        text("summary/table", summary_table(variants))
        if len(variants) > 1:
            profiles = {n: v["layers"] for n, v in variants.items()}
            figure("compare/figures/profiles", figures.profiles_figure(profiles, f"{model}: all variants")[0])
            changes = {n: v["change_vs_baseline"]["top1_pct"] for n, v in variants.items() if n != BASELINE}
            figure(
                "compare/figures/top1_change",
                figures.change_figure(changes, f"{model}: top-1 vs baseline")[0],
            )
            text("compare/tables/change", change_table(variants))
        sweep = results.get("sweep")
        if sweep:
            mean = [
                variants[n]["change_vs_baseline"]["mean_over_layers"]["top1_pct"] for n in sweep["variants"]
            ]
            figure(
                "sweep/figures/top1_change_vs_k",
                figures.sweep_figure(sweep["k"], mean, f"{model}: cumulative pruning ({sweep['order']})")[0],
            )
        if writer is not None:
            writer.flush()

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
