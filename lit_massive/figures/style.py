"""One style for every figure: the resolution, how an unmeasured (null) value shows, the colour
cycle, the colour maps, the line styles of overlapping series and where a legend goes. The
figure modules draw with these; report/publisher.py writes the PNGs at `DPI`."""

from __future__ import annotations

from matplotlib import colormaps
from matplotlib.axes import Axes

DPI = 120  # figures' resolution, in PNG files and TensorBoard alike

NAN = float("nan")
UNMEASURED = "0.8"  # light grey: the colour of a grid's null (unmeasured) cells
MASKED = "0.85"  # lighter grey: the masked (future) keys of an attention map

# colour maps of grids: values from 0 (head scores, logits); values whose few bright peaks
# matter (attention received, sinks, massive dims); changes and cosines around 0
SEQUENTIAL, PEAKS, DIVERGING = "viridis", "magma", "RdBu_r"

MANY = 8  # more lines than this: the legend goes beside the chart


def values(row: list[float | None]) -> list[float]:
    """Unmeasured (null) values become NaN: gaps in a line, blank (or grey) cells in a grid."""
    return [NAN if v is None else v for v in row]


def color(i: int) -> tuple[float, float, float, float]:
    """The i-th colour of the cycle (tab10, repeating): for lines whose count is open-ended."""
    return colormaps["tab10"](i % 10)


def colors(n: int) -> list:
    """n distinct colours: tab10 up to 10 lines, tab20 up to 20, then evenly along viridis."""
    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else SEQUENTIAL]
    return [cmap(i) if n <= 20 else cmap(i / max(n - 1, 1)) for i in range(n)]


def overlap(i: int) -> dict:
    """Markers and widths that shrink line by line, so a line drawn over an equal one leaves
    it visible."""
    return {"marker": "osD^v<>p"[i % 8], "ms": max(9 - 1.5 * i, 3), "lw": max(2.5 - 0.3 * i, 1.0), "zorder": 2 + i}


def legend(ax: Axes, n_lines: int | None = None) -> None:
    """The legend of `ax`'s labelled lines: over the chart in small type for a few, beside it
    in columns for more than `MANY` (`n_lines`: how many, by default the labelled ones)."""
    n = len(ax.get_legend_handles_labels()[1]) if n_lines is None else n_lines
    if n > MANY:  # beside the chart, in columns, instead of over the lines
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + n // 16)
    else:
        ax.legend(fontsize="small")


LONG_LABEL = 40  # characters: legends with a longer entry go under the chart, where they take none of its width
TWO_COLUMNS = 55  # characters: the longest entry that fits twice across the figure's width at small font size
LEGEND_ROW = 0.22  # inches of figure height per legend row under the chart, so the chart keeps its height


def outside_legend(ax: Axes, n: int) -> None:
    """Off the chart, never over it: the runs' lines span the whole axes (with relative
    depth, every one from 0 to 1), so no corner inside is free of data. Beside it, or for
    long labels (paths, corpora) under it, in one or two columns."""
    small = "x-small" if n > MANY else "small"
    labels = ax.get_legend_handles_labels()[1]
    if max(map(len, labels), default=0) <= LONG_LABEL:
        ax.legend(fontsize=small, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, ncol=1 + n // 16)
        return
    fig = ax.get_figure()
    ncol = 2 if max(map(len, labels)) <= TWO_COLUMNS and n > 1 else 1
    fig.legend(fontsize=small, loc="outside lower center", ncol=ncol)
    width, height = fig.get_size_inches()
    fig.set_size_inches(width, height + LEGEND_ROW * -(-n // ncol))
