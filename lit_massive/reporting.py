"""Write a finished run: results.json, TensorBoard scalars / figure / table, PNG copies.

Reads only what the LightningModule computed; only rank 0 writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from lit_massive.errors import InputError
from lit_massive.figures import layer_profile_figure
from lit_massive.results import variant_results

RESULTS = "results.json"


def markdown_table(layers: list[dict]) -> str:
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
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in layers:
        ratio = "n/a" if r["top1_over_median"] is None else f"{r['top1_over_median']:.1f}"
        cells = [
            str(r["layer"]),
            *(f"{t:.4g}" for t in r["top"]),
            f"{r['median']:.4g}",
            ratio,
            f"{r['massive_fraction']:.2f}",
            f"{r['top1_dim']} ({r['top1_dim_fraction']:.2f})",
            f"{r['top1_position']} ({r['top1_position_fraction']:.2f})",
            f"`{r['top1_token']!r}` ({r['top1_token_fraction']:.2f})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ensure_new_run_dir(run_dir: Path, files: tuple[str, ...] = (RESULTS, "config.yaml")) -> None:
    """Refuse a run directory that already holds a run, before anything is written to it."""
    for name in files:
        if (run_dir / name).exists():
            raise InputError(
                f"{run_dir / name} already exists; give the run a new directory (leave "
                f"trainer.logger's version unset so each run gets the next version_N)"
            )


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
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / RESULTS, "x", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        writer = next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        figures = self.run_dir / "figures"
        figures.mkdir(exist_ok=True)
        for name, variant in results["variants"].items():
            layers = variant["layers"]
            fig, _ = layer_profile_figure(layers, f"{results['model']['name_or_path']}: {name}")
            fig.savefig(figures / f"{name}_layer_profile.png", dpi=120)
            if writer is None:
                continue
            for row in layers:
                for j, value in enumerate(row["top"]):
                    writer.add_scalar(f"{name}/profile/top{j + 1}", value, global_step=row["layer"])
                writer.add_scalar(f"{name}/profile/median", row["median"], global_step=row["layer"])
            writer.add_figure(f"{name}/figures/layer_profile", fig, close=False)
            writer.add_text(f"{name}/tables/layer_profile", markdown_table(layers))
        if writer is not None:
            writer.flush()

    @staticmethod
    def collect(trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        datamodule = trainer.datamodule
        tokenizer = getattr(datamodule, "tokenizer", None)
        decode = (lambda i: tokenizer.decode([i])) if tokenizer is not None else str
        return {
            "model": pl_module.describe(),
            "data": datamodule.describe() if hasattr(datamodule, "describe") else None,
            "precision": str(trainer.precision),
            "world_size": trainer.world_size,
            "variants": {
                name: variant_results(profile, decode) for name, profile in pl_module.results.items()
            },
        }
