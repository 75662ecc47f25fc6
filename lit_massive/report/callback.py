"""Write a finished run: results.json, then what every analysis publishes (TensorBoard
scalars / figures / tables, PNG copies). Reads only the module's `RunResults`; only rank 0
writes. The CLI registers `RunReport`.

Every file is written whole or not at all (a temporary file, renamed). A Ctrl-C ends the run
with one line saying what it left (`RunReport.on_exception`): before results.json exists,
the files the run wrote are removed, and its directory with them; after it, results.json
(complete) stays and an `INTERRUPTED` file (and a TensorBoard text card) says that the
figures and TensorBoard data may be incomplete."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from lit_massive.analyses import ANALYSES, summary_columns_of
from lit_massive.errors import InputError, RunWarning
from lit_massive.report.comparison import model_run_name
from lit_massive.report.publisher import Publisher, VariantRuns, write_atomic
from lit_massive.report.tables import summary_table
from lit_massive.results.schema import RESULTS, RunResults


def ensure_new_run_dir(run_dir: Path, files: tuple[str, ...] = (RESULTS, "config.yaml")) -> None:
    """Refuse a run directory that already holds a run, before anything is written to it."""
    for name in files:
        if (run_dir / name).exists():
            raise InputError(
                f"{run_dir / name} already exists; give the run a new directory (leave "
                f"trainer.logger's version unset so each run gets the next version_N)"
            )


INTERRUPTED = "INTERRUPTED"  # beside a results.json whose run was interrupted while writing figures
PROG = "lit_massive"
# what a run writes to its directory before results.json (the config, the logger's files)
_BEFORE_RESULTS = ("config.yaml", "hparams.yaml", "metrics.csv")


def write_json(path: Path, content: dict) -> None:
    """Write `content` to a new file `path` whole or not at all: an interrupt while writing
    leaves no half file behind (the text goes to a temporary file, renamed when complete)."""
    if path.exists():
        raise InputError(f"{path} already exists; give the run a new directory")

    def dump(partial: Path) -> None:
        with open(partial, "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2)

    write_atomic(path, dump)


def shown(path: Path) -> str:
    """`path` as the user reads it: relative to the working directory when inside it."""
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    return str(path)


def remove_unfinished(run_dir: Path, since: float) -> bool:
    """Remove what a run that wrote no results left in `run_dir` (its config.yaml,
    hparams.yaml, this process's TensorBoard events file, temporary files), then the
    directory if that left it empty (never the working directory); True when the directory
    is gone. A file that was there before the run started (`since`, a `time.time()`) stays,
    and so does the directory."""
    events = f".{os.getpid()}."  # events.out.tfevents.TIME.HOST.PID.N: this process's own
    for entry in run_dir.iterdir():
        name = entry.name
        own_events = name.startswith("events.out.tfevents.") and events in name
        ours = name in _BEFORE_RESULTS or name.endswith(".partial") or own_events
        if ours and entry.is_file() and entry.stat().st_mtime >= since - 1:
            entry.unlink()
    with contextlib.suppress(OSError):
        (run_dir / "figures").rmdir()  # only if empty
    if run_dir.resolve() == Path.cwd().resolve():  # `trainer.logger: false` writes here: it stays
        return False
    try:
        run_dir.rmdir()  # only if empty
    except OSError:
        return False
    return True


class _DropInterruptLine(logging.Filter):
    """Lightning's "Detected KeyboardInterrupt, attempting graceful shutdown ..." line:
    `RunReport` prints one line instead, saying what the interrupt left."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Detected KeyboardInterrupt" not in str(record.msg)


def _drop_interrupt_line() -> None:
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropInterruptLine) for f in logger.filters):
        logger.addFilter(_DropInterruptLine())


def _stop_progress_bar(trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
    """End the progress bar's display before the interrupt's line, so that line comes last."""
    bar = trainer.progress_bar_callback
    if bar is None:
        return
    bar.on_exception(trainer, pl_module, exception)  # the rich bar stops its live display
    for name in ("_val_progress_bar", "_test_progress_bar", "_predict_progress_bar", "_train_progress_bar"):
        tqdm_bar = getattr(bar, name, None)  # a TQDMProgressBar's bars end their line
        if tqdm_bar is not None and hasattr(tqdm_bar, "close"):
            tqdm_bar.close()


def _open_writer(trainer: L.Trainer):
    """The TensorBoard writer the run opened, if any (never opens one)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and getattr(logger, "_experiment", None) is not None:
            return logger._experiment
    return None


def _logger_dir(trainer: L.Trainer) -> Path | None:
    """The run directory before `setup` has read it: the first logger's version folder, read
    on this process alone (`trainer.log_dir` is a collective)."""
    logger = trainer.loggers[0] if trainer.loggers else None
    return Path(logger.log_dir) if isinstance(logger, (TensorBoardLogger, CSVLogger)) else None


class CtrlC:
    """A Ctrl-C while results are written, remembered as well as raised. C code that runs
    Python code and then clears whatever it raised (a dict lookup calling `__eq__`, a C-level
    hasattr) can swallow the KeyboardInterrupt of Python's default handler, and the run would
    then end as if no one had pressed it: `check` raises it again."""

    def __init__(self) -> None:
        self.pressed = False

    def handler(self, signum: int, frame) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.pressed:
            raise KeyboardInterrupt


@contextlib.contextmanager
def kept_ctrl_c():
    """`CtrlC`'s handler for SIGINT while the block runs, in place of Python's default one
    (any other handler, or an ignored SIGINT, is left alone), and a last `check` at its end."""
    ctrl_c = CtrlC()
    main = threading.current_thread() is threading.main_thread()
    ours = main and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if ours:
        signal.signal(signal.SIGINT, ctrl_c.handler)
    try:
        yield ctrl_c
        ctrl_c.check()
    finally:
        if ours:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def shown_model(model: dict) -> str:
    """The model as figures and tables name it: its run directory's name (`model_run_name`:
    a local folder or .gguf file by its name, not the absolute path, which would fill every
    title; a revision after `@`), from results.json's `model` section."""
    return model_run_name(model["name_or_path"], revision=model.get("revision"), gguf_file=model.get("gguf_file"))


def publish(results: RunResults, run_dir: Path, writer=None, between: Callable[[], None] = lambda: None) -> None:
    """What every analysis that ran publishes, per variant and for the run, and the summary
    table: for the default corpus as for a run over one, then for each other corpus under its
    name (`Publisher`), with the run-level sections (feature_view) the default corpus's alone;
    each variant's TensorBoard data in its own run (`VariantRuns`: a colour per variant).
    `between` runs after each analysis's part (`CtrlC.check`). Figures and tables name the
    model by `shown_model`; results.json keeps its full path."""
    model = shown_model(results.model)
    ran = [ANALYSES[name] for name in results.analyses]
    runs = [(None, results)] + [
        (name, replace(results, data=corpus["data"], variants=corpus["variants"], sections={}, corpora={}))
        for name, corpus in results.corpora.items()
    ]
    with VariantRuns(run_dir, writer, results.variants) as variant_runs:
        for corpus, run in runs:
            out = Publisher(run_dir, writer, corpus, variant_runs)
            for name, entry in run.variants.items():
                for cls in ran:
                    cls.publish(out, model, name, entry)
                    between()
            out.text("summary/table", summary_table(run.variants, summary_columns_of))
            for cls in ran:
                cls.publish_run(out, model, run)
                between()


class RunReport(Callback):
    """Writes the run directory's results at the end of validation, from the module's
    `results` (a `RunResults`)."""

    latest: RunReport | None = None  # the one made last: what the CLI asks after a Ctrl-C outside the run

    def __init__(self) -> None:
        self.run_dir: Path | None = None
        self.started = time.time()  # files older than this are not the run's own
        self.stage = "measuring"  # then "written", once results.json, figures and TensorBoard are
        self.said = False  # whether it printed the line about an interrupt
        RunReport.latest = self
        _drop_interrupt_line()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # trainer.log_dir is a collective under several processes: read it on every rank
        self.run_dir = Path(trainer.log_dir)
        self.stage = "measuring"
        # config.yaml may already be this run's own (SaveConfigCallback writes it in its setup)
        ensure_new_run_dir(self.run_dir, files=(RESULTS,))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = getattr(pl_module, "results", None)
        if trainer.is_global_zero and results is not None:
            writer = next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
            self.write(results, writer)
            self.stage = "written"
        # the other ranks wait, so none exits while rank 0 still holds the process group
        trainer.strategy.barrier("lit_massive.report")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """A Ctrl-C: Lightning ignores further ones, calls this, then exits with status 1. Rank 0
        tidies the run directory and prints one line saying what is left (no collective here:
        the other ranks may be anywhere)."""
        if not isinstance(exception, KeyboardInterrupt) or not trainer.is_global_zero:
            return
        _stop_progress_bar(trainer, pl_module, exception)
        run_dir = self.run_dir or _logger_dir(trainer)
        try:
            line = self.after_interrupt(run_dir, _open_writer(trainer))
        except Exception as err:  # the line still comes, saying what went wrong
            line = f"interrupted; could not tidy {shown(run_dir) if run_dir else 'the run'}: {err}"
        print(f"{PROG}: {line}", file=sys.stderr, flush=True)
        self.said = True

    def after_interrupt(self, run_dir: Path | None, writer=None) -> str:
        """Leave `run_dir` complete, marked or gone; the line that says which."""
        if run_dir is None or not run_dir.is_dir():
            return "interrupted before the run directory was made; nothing was written"
        if self.stage == "written":
            return f"interrupted after the run was written; {shown(run_dir)} is complete"
        if (run_dir / RESULTS).is_file():  # written whole: only figures and TensorBoard data may be missing
            note = (
                f"Interrupted (Ctrl-C) at {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC while writing "
                f"figures and TensorBoard data: {RESULTS} is complete; figures/ and the TensorBoard "
                f"events may be incomplete."
            )
            if writer is not None:
                writer.add_text("run/interrupted", note)
            write_atomic(run_dir / INTERRUPTED, lambda partial: partial.write_text(note + "\n", encoding="utf-8"))
            return (
                f"interrupted while writing figures; {shown(run_dir / RESULTS)} is complete, "
                f"figures and TensorBoard data may not be (marked {INTERRUPTED})"
            )
        if writer is not None:
            writer.close()  # its thread writes no more to a file about to go
        if remove_unfinished(run_dir, self.started):
            return f"interrupted: run directory {shown(run_dir)} removed (no results written)"
        return f"interrupted: no results written; this run's files removed from {shown(run_dir)} (the rest predate it)"

    def write(self, results: RunResults, writer=None) -> None:
        """results.json, then TensorBoard (`writer`, if any) and PNG figures and tables."""
        for corpus, variants in results.by_corpus().items():
            for name, entry in variants.items():
                shown_name = name if corpus == results.corpus else f"{corpus}/{name}"
                for cls in ANALYSES.values():
                    for message in cls.warnings(shown_name, entry):
                        warnings.warn(message, RunWarning, stacklevel=2)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with kept_ctrl_c() as ctrl_c:
            write_json(self.run_dir / RESULTS, results.to_json())
            publish(results, self.run_dir, writer, ctrl_c.check)
            if writer is not None:
                writer.flush()


def interrupted_line() -> str | int:
    """How the CLI exits after a Ctrl-C outside Lightning's own handling of one (loading the
    model and data, or printing the summary after the run): the line to print, or status 1
    when `RunReport` printed it already (a second Ctrl-C while Lightning shuts down)."""
    report = RunReport.latest
    if report is not None and report.said:
        return 1
    if report is not None and report.stage == "written" and report.run_dir is not None:
        return f"{PROG}: interrupted after the run was written; {shown(report.run_dir)} is complete"
    return f"{PROG}: interrupted before the run started; nothing was written"


def exit_if_interrupted(err: BaseException) -> None:
    """Exit with status 1, and no traceback, if `err` was raised while Lightning shut down
    after a Ctrl-C (its teardown fails on a half-loaded model): the interrupt's line is
    printed already, or is printed now."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, KeyboardInterrupt):
        cause = cause.__context__
    if cause is None:
        return
    report = RunReport.latest
    said = report is not None and report.said
    sys.exit(1 if said or rank_zero_only.rank != 0 else interrupted_line())
