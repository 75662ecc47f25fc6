"""What an analysis publishes through (`Analysis.publish`): figures, markdown tables and
scalars by tag. Only the protocol lives here, below the analyses; report/publisher.py's
`Publisher` (TensorBoard and PNG files) is the one a run hands them."""

from __future__ import annotations

from typing import Protocol

from matplotlib.figure import Figure


class Publisher(Protocol):
    def figure(self, tag: str, fig: Figure) -> None:
        """Publish a figure (TensorBoard's Images tab, and a PNG file)."""

    def text(self, tag: str, markdown: str) -> None:
        """Publish a markdown table or text (TensorBoard's Text tab)."""

    def scalar(self, tag: str, value: float | None, step: int) -> None:
        """Publish one value at a step (a layer, a k, ...); None: not measured, left out."""

    def chart_layout(self, layout: dict[str, dict[str, list]]) -> None:
        """TensorBoard's Custom Scalars layout: section -> chart -> ["Multiline", tag regexes]."""
