"""Where published results go: TensorBoard (when the run has a TensorBoard logger) and
RUN/figures/ as PNG files. Analyses publish through it (`Analysis.publish`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imsave

DPI = 120  # figures' resolution, in PNG files and TensorBoard alike


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


class Publisher:
    """Sends each figure to TensorBoard and to RUN/figures/ as a PNG, each markdown table to
    TensorBoard's text tab, each scalar to TensorBoard (its step: a layer, a k, ...).

    With a `corpus` (every corpus of a run over several but the default), every tag starts
    with ``CORPUS/`` and its PNGs go to RUN/figures/CORPUS/: the same tags and file names as the
    default corpus's, one level down, so TensorBoard groups each corpus and no file clobbers another."""

    def __init__(self, run_dir: Path, writer=None, corpus: str | None = None) -> None:
        self.run_dir, self.writer = run_dir, writer
        self.prefix = "" if corpus is None else f"{corpus}/"
        (run_dir / "figures").mkdir(exist_ok=True)

    def figure(self, tag: str, fig: Figure) -> None:
        """Draw `fig` once, at the PNG's resolution, and send the same pixels to both places
        (drawing is most of a small run's reporting time)."""
        tag = self.prefix + tag
        fig.set_dpi(DPI)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())  # (H, W, 4) uint8
        png = self.run_dir / "figures" / f"{tag.replace('/figures/', '_')}.png"
        png.parent.mkdir(parents=True, exist_ok=True)  # figures/CORPUS/
        write_atomic(png, lambda partial: imsave(partial, rgba, format="png"))
        if self.writer is not None:
            self.writer.add_image(tag, rgba[..., :3], dataformats="HWC")

    def text(self, tag: str, markdown: str) -> None:
        if self.writer is not None:
            self.writer.add_text(self.prefix + tag, markdown)

    def scalar(self, tag: str, value: float | None, step: int) -> None:
        if self.writer is not None and value is not None:  # null: not measured (overflow)
            self.writer.add_scalar(self.prefix + tag, value, global_step=step)

    def chart_layout(self, layout: dict[str, dict[str, list]]) -> None:
        """TensorBoard's Custom Scalars tab: section title -> chart title -> ["Multiline", tag
        regexes]. One layout per run, the default corpus's: another corpus's tags, one level
        down, show in the Scalars tab under the corpus's name."""
        if self.writer is not None and not self.prefix:
            self.writer.add_custom_scalars(layout)
