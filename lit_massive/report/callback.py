"""Write a finished run: results.json, then what every analysis publishes (TensorBoard
scalars / figures / tables, PNG copies). Reads only the module's `RunResults`; only rank 0
writes. The CLI registers `RunReport`."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from lit_massive.analyses import ANALYSES, summary_columns_of
from lit_massive.errors import InputError
from lit_massive.report.publisher import Publisher
from lit_massive.report.schema import RESULTS, RunResults
from lit_massive.report.tables import summary_table


def ensure_new_run_dir(run_dir: Path, files: tuple[str, ...] = (RESULTS, "config.yaml")) -> None:
    """Refuse a run directory that already holds a run, before anything is written to it."""
    for name in files:
        if (run_dir / name).exists():
            raise InputError(
                f"{run_dir / name} already exists; give the run a new directory (leave "
                f"trainer.logger's version unset so each run gets the next version_N)"
            )


def write_json(path: Path, content: dict) -> None:
    """Write `content` to a new file `path` whole or not at all: an interrupt while writing
    leaves no half file behind (the text goes to a temporary file, renamed when complete)."""
    if path.exists():
        raise InputError(f"{path} already exists; give the run a new directory")
    partial = path.with_name(f".{path.name}.partial")
    try:
        with open(partial, "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def publish(results: RunResults, run_dir: Path, writer=None) -> None:
    """What every analysis that ran publishes, per variant and for the run, and the summary table."""
    out = Publisher(run_dir, writer)
    model = results.model["name_or_path"]
    ran = [ANALYSES[name] for name in results.analyses]
    for name, entry in results.variants.items():
        for cls in ran:
            cls.publish(out, model, name, entry)
    out.text("summary/table", summary_table(results.variants, summary_columns_of))
    for cls in ran:
        cls.publish_run(out, model, results)


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
        for name, entry in results.variants.items():
            for cls in ANALYSES.values():
                for message in cls.warnings(name, entry):
                    warnings.warn(message, stacklevel=2)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / RESULTS, results.to_json())
        publish(results, self.run_dir, writer)
        if writer is not None:
            writer.flush()
