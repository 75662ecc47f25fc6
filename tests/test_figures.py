"""Figures and tables read right: every statistic, symmetric % axes, marked pruned heads."""

import re

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from lit_massive.analyses import columns_of, summary_columns_of
from lit_massive.analyses.locator import locator_table
from lit_massive.figures import figures, head_figures
from lit_massive.report.tables import summary_table, terminal_summary


def _layers(tops, medians):
    return [{"layer": i, "top": t, "median": m} for i, (t, m) in enumerate(zip(tops, medians, strict=True))]


def test_small_changes_stay_small_on_a_symmetric_axis():
    _, ax = figures.change_figure({"a": [0.0, 0.13, 0.13], "b": [0.0, 0.0, 0.0]}, "t")
    assert ax.get_ylim() == pytest.approx((-figures.MIN_PCT_SPAN, figures.MIN_PCT_SPAN))
    assert any(list(line.get_ydata()) == [0.0, 0.0] for line in ax.get_lines())  # the zero line
    _, ax = figures.change_figure({"a": [0.0, -40.0, 10.0]}, "t")
    low, high = ax.get_ylim()
    assert low == -high and high >= 40
    assert "b (no change)" in [t.get_text() for t in figures.change_figure({"b": [0.0]}, "t")[1].get_legend().texts]


def test_change_heatmap_shows_every_statistic_of_every_variant():
    change = {"top1_pct": [0.0, 0.0], "top2_pct": [0.0, -33.0], "median_pct": [0.1, 0.0], "perplexity_pct": 1.0}
    change["mean_over_layers"] = {"top1_pct": 0.0}
    _, ax = figures.change_heatmap({"p": change, "q": change}, "t")
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["p: top-1", "p: top-2", "p: median", "q: top-1", "q: top-2", "q: median"]
    image = ax.get_images()[0]
    assert image.get_array()[1, 1] == -33.0 and image.get_clim() == (-33.0, 33.0)
    assert "-33.0" in [t.get_text() for t in ax.texts]


def test_variant_equal_to_baseline_is_marked_and_baseline_stays_visible():
    base = _layers([[10.0], [2000.0]], [1.0, 1.0])
    _, ax = figures.profiles_figure({"baseline": base, "same": base, "other": _layers([[9.0], [5.0]], [1, 1])}, "t")
    assert [t.get_text() for t in ax.get_legend().texts] == ["baseline", "same (= baseline)", "other"]
    assert ax.get_lines()[0].get_linewidth() > ax.get_lines()[2].get_linewidth()  # baseline wide, underneath


def test_pruned_heads_are_marked_on_the_heatmap():
    scores = [[0.1] * 4 for _ in range(3)]
    _, ax = figures.head_heatmap(scores, "t", [[2, 1], [0, 3]])
    (marks,) = ax.collections
    assert marks.get_offsets().tolist() == [[1, 2], [3, 0]]  # (head, layer)


def test_feature_view_without_massive_dims_labels_the_largest():
    values = [[0.0] * 10 for _ in range(2)]
    values[1][7], values[0][2], values[0][4] = 9.0, 5.0, 4.0
    fig, (ax3, ax2) = figures.feature_view_figure(values, ["a", "b"], [], "t", "nothing massive: why")
    ticks = [t.get_text() for t in ax2.get_xticklabels()]
    assert {"0", "2", "4", "7", "9"} <= set(ticks)
    assert any("largest dim 7: 9" in t.get_text() and "'b'" in t.get_text() for t in ax2.texts)
    assert "nothing massive: why" in fig._suptitle.get_text()


def test_locator_table_in_layer_order_and_no_python_none():
    massive = [
        {"layer": layer, "dim": 1, "position": 0, "token": "x", "value": value, "fraction": 1.0}
        for layer, value in [(5, 10.0), (2, 300.0), (2, 900.0), (0, 50.0)]
    ]
    rows = locator_table(massive).splitlines()[2:]
    assert [r.split("|")[1].strip() for r in rows] == ["0", "2", "2", "5"]
    assert "900" in rows[1]
    variant = {"pruned_heads": [], "perplexity": None, "first_massive_layer": None, "first_nonfinite_layer": None}
    assert "None" not in summary_table({"baseline": variant}, summary_columns_of)


def test_heatmaps_are_scaled_to_their_values_and_say_so():
    received = [[0.3, 0.12, 0.05], [0.6, 0.1, None]]
    fig, ax = figures.received_figure(received, "t")
    assert ax.images[0].get_clim() == (0.0, 0.6)
    assert "0 to 0.6" in fig.axes[-1].get_ylabel()  # the colorbar
    fig, ax = figures.head_heatmap([[0.0, 0.0], [0.0, 0.0]], "t", label="on massive tokens")  # none in the windows
    assert ax.images[0].get_clim() == (0.0, 1.0) and "every value is 0" in fig.axes[-1].get_ylabel()


def test_a_head_grid_shows_a_null_cell_unlike_a_zero_one():
    """On the diverging scale 0 is white: an unmeasured (null) head is grey, and the colour
    bar says so."""
    fig, ax = head_figures.head_grid([[0.0, None], [0.5, -0.5]], "t", "cosine", diverging=True)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3]

    def cell(row: int, col: int) -> tuple[int, ...]:
        x, y = ax.transData.transform((col, row))
        return tuple(int(c) for c in pixels[pixels.shape[0] - int(y), int(x)])

    zero, null = cell(0, 0), cell(0, 1)
    assert zero == (247, 247, 247) or min(zero) > 240  # RdBu_r's white middle
    assert null == (204, 204, 204)  # UNMEASURED, 0.8 grey
    assert "grey: not measured" in fig.axes[-1].get_ylabel()
    fig, _ = head_figures.head_grid([[0.0, 0.1]], "t", "cosine", diverging=True)
    assert "not measured" not in fig.axes[-1].get_ylabel()


@pytest.fixture(scope="module")
def compared_run():
    """The toy, baseline and one pruned variant: real entries for the end-of-run tables."""
    import lit_massive

    data = {"dataset": "toy", "seq_len": 64, "num_sequences": 2, "batch_size": 2}
    return lit_massive.measure("toy", data, analyses=["perplexity"], variants={"cut": [[5, 1]]})


def _cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def test_the_change_columns_only_when_there_is_a_variant(compared_run):
    """A baseline alone has nothing to compare: no % columns (they would hold only dashes) and no note on them."""
    entries = compared_run.variants
    alone = terminal_summary({None: {"baseline": entries["baseline"]}}, columns_of).splitlines()
    assert _cells(alone[0]) == ["variant", "first massive", "peak top-1/median (layer)", "perplexity"]
    assert len(alone) == 3 and "%" not in "\n".join(alone)  # header, rule, the baseline's row
    both = terminal_summary({None: entries}, columns_of).splitlines()
    head = _cells(both[0])
    assert head[4:] == ["top-1 %", "perplexity %", "largest % (stat, layer)"]
    cut = dict(zip(head, _cells(both[3]), strict=True))
    change = entries["cut"]["change_vs_baseline"]
    assert cut["top-1 %"] == format(change["mean_over_layers"]["top1_pct"], "+.2f")
    assert cut["perplexity %"] == format(change["perplexity_pct"], "+.2f")
    assert both[-1].startswith("%: change vs baseline")
    # the same in TensorBoard's summary table
    assert "change" not in summary_table({"baseline": entries["baseline"]}, summary_columns_of)
    assert "| mean top-1 change % |" in summary_table(entries, summary_columns_of)


def _drawn_labels(fig, ax) -> list:
    """The token axis's labels as drawn: (text, box in pixels), the blank ones left out."""
    fig.set_dpi(120)  # the Publisher's
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ticks = ax.yaxis.get_major_ticks()
    return [(t.label1.get_text(), t.label1.get_window_extent(renderer)) for t in ticks if t.label1.get_text()]


@pytest.mark.parametrize("n", [8, 40])
def test_the_3d_views_token_labels_do_not_overlap(n):
    """Eight tokens (the demo's text) are all labelled; forty get a label every k-th token,
    the first one included; no drawn label overlaps another."""
    words = ["Summer", "is", "warm", ".", "Winter", "is", "cold", "."]
    tokens = [words[t % 8] for t in range(n)]
    values = [[float(t + d) for d in range(96)] for t in range(n)]
    values[0][17] = 2000.0
    fig, (ax3, _) = figures.feature_view_figure(values, tokens, [17], "t")
    drawn = _drawn_labels(fig, ax3)
    boxes = [box for _, box in drawn]
    assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :] if a.overlaps(b)]
    shown = [t.label1.get_text() for t in ax3.yaxis.get_major_ticks()]
    assert len(shown) == n  # a tick per token
    step = next(t for t in range(1, n) if shown[t]) if n > 1 else 1
    assert shown == [tokens[t] if t % step == 0 else "" for t in range(n)]
    assert (step == 1) == (n == 8)
