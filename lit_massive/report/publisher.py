"""Where published results go: TensorBoard (when the run has a TensorBoard logger) and
RUN/figures/ as PNG files. Analyses publish through it (`Analysis.publish`), knowing only
its protocol (figures/publishing.py); figures/style.py sets the resolution.

TensorBoard colours a curve by its run, never by its tag, so each variant is a run of its
own (RUN/variants/VARIANT): a chart of ``profile/top1`` then draws every variant of every
selected run in its own colour, in the Scalars and the Custom Scalars tab alike. What spans
the run (comparisons, the sweep, the summary, the feature view) stays in the run itself."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imsave

from lit_massive.figures.style import DPI

VARIANT_RUNS = "variants"  # RUN/variants/VARIANT: each variant's TensorBoard run


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Make the file `path` whole or not at all: `write(temporary)` fills a temporary file in
    the same folder, renamed to `path` once complete, so an interrupt (Ctrl-C) or a failure
    while writing leaves no empty or half file behind, only nothing."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


class VariantRuns:
    """One TensorBoard writer per variant, in RUN/variants/VARIANT, opened when the variant
    first publishes and closed together (a context manager), so none outlives the report."""

    def __init__(self, run_dir: Path, writer: Any, names: Iterable[str]) -> None:
        self.run_dir, self.writer, self.names = run_dir, writer, set(names)
        self.open: dict[str, Any] = {}

    def writer_for(self, name: str) -> Any:
        """The writer of variant `name`, of the run's own writer class (Lightning's choice)."""
        if name not in self.open:
            self.open[name] = type(self.writer)(log_dir=str(self.run_dir / VARIANT_RUNS / name))
        return self.open[name]

    def __enter__(self) -> VariantRuns:
        return self

    def __exit__(self, *exc: object) -> None:
        for writer in self.open.values():
            writer.close()
        self.open.clear()


class Publisher:
    """The run's `figures.publishing.Publisher`: sends each figure to TensorBoard and to
    RUN/figures/ as a PNG, each markdown table to TensorBoard's text tab, each scalar to
    TensorBoard (its step: a layer, a k, ...).

    With a `corpus` (every corpus of a run over several but the default), every tag starts
    with ``CORPUS/`` and its PNGs go to RUN/figures/CORPUS/: the same tags and file names as the
    default corpus's, one level down, so TensorBoard groups each corpus and no file clobbers another.

    With `variant_runs`, a tag that starts with a variant's name (``VARIANT/profile/top1``) goes
    to that variant's own run without its name (``profile/top1``); its PNG keeps the full name."""

    def __init__(
        self, run_dir: Path, writer=None, corpus: str | None = None, variant_runs: VariantRuns | None = None
    ) -> None:
        self.run_dir, self.writer, self.variant_runs = run_dir, writer, variant_runs
        self.prefix = "" if corpus is None else f"{corpus}/"
        (run_dir / "figures").mkdir(exist_ok=True)

    def target(self, tag: str) -> tuple[Any, str]:
        """The writer and tag that `tag` goes to in TensorBoard: its variant's run or this run."""
        name, sep, rest = tag.partition("/")
        runs = self.variant_runs
        if self.writer is None or runs is None or not sep or name not in runs.names:
            return self.writer, self.prefix + tag
        return runs.writer_for(name), self.prefix + rest

    def figure(self, tag: str, fig: Figure) -> None:
        """Draw `fig` once, at the PNG's resolution, and send the same pixels to both places
        (drawing is most of a small run's reporting time)."""
        fig.set_dpi(DPI)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())  # (H, W, 4) uint8
        png = self.run_dir / "figures" / f"{(self.prefix + tag).replace('/figures/', '_')}.png"
        png.parent.mkdir(parents=True, exist_ok=True)  # figures/CORPUS/
        write_atomic(png, lambda partial: imsave(partial, rgba, format="png"))
        writer, tag = self.target(tag)
        if writer is not None:
            writer.add_image(tag, rgba[..., :3], dataformats="HWC")

    def text(self, tag: str, markdown: str) -> None:
        writer, tag = self.target(tag)
        if writer is not None:
            writer.add_text(tag, markdown)

    def scalar(self, tag: str, value: float | None, step: int) -> None:
        writer, tag = self.target(tag)
        if writer is not None and value is not None:  # null: not measured (overflow)
            writer.add_scalar(tag, value, global_step=step)

    def chart_layout(self, layout: dict[str, dict[str, list]]) -> None:
        """TensorBoard's Custom Scalars tab: section title -> chart title -> ["Multiline", tag
        regexes]. One layout per run, the default corpus's: another corpus's tags, one level
        down, show in the Scalars tab under the corpus's name."""
        if self.writer is not None and not self.prefix:
            self.writer.add_custom_scalars(layout)
