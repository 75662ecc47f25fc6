"""`python -m lit_massive compare RUN_OR_RESULTS ... --out DIR`: several runs side by side.

Reads two or more runs (run directories or their results.json; any models, corpora,
variants), prints one table row per run x variant x corpus and writes, into DIR,
comparison.md (the table and its notes), comparison.json (the rows, every number as the
runs' results.json has it) and PNG figures that overlay the runs. Checkpoints of one model
(revision `stepN`, or `stepN` / `checkpoint-N` folders: `order_by_step`) come in training-step
order, with a step column and figures of each statistic against the step. Runs that differ
in precision or dtype get a column for each and say it in the figure labels; a run interrupted
while writing its figures is marked. Runs of the first run's model on its windows (a GGUF
quantization and its float original, ...) are compared with it layer by layer and massive
entry by massive entry (report/weights_comparison.py: `against_reference`). Bad input (a
missing run, a run directory without results.json, a file that is not a results.json, a
single run, a DIR with files in it) fails in one line before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure

from lit_massive.cli.console import OneLineArgumentParser
from lit_massive.errors import InputError
from lit_massive.figures.style import DPI
from lit_massive.report.comparison import (
    FIGURES,
    JSON,
    MARKDOWN,
    WRITTEN,
    Run,
    comparison_figures,
    comparison_markdown,
    comparison_rows,
    load_runs,
    notes,
    order_by_step,
    step_model,
    terminal_table,
    tokenizers_differ,
    training_step,
)
from lit_massive.report.publisher import write_atomic
from lit_massive.report.step_figures import step_figures
from lit_massive.report.weights_comparison import KEY, against_reference, reference_lines, reference_markdown

# no torch, transformers or lightning on this path (tests/test_startup.py): results.json is
# read as JSON, the figures are matplotlib's

DEFAULT_OUT = Path("comparison")


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse an output directory that is a file, or that holds files already (unless
    `force`: then compare's own files there are replaced, the others stay)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(f"--out {out} is not empty; give a new directory, or add --force to replace its comparison")


def write_comparison(out: Path, markdown: str, content: dict, figures: dict) -> list[Path]:
    """Write comparison.md, comparison.json and the figures (each file whole or not at all);
    remove a figure an earlier comparison left there that this one does not have."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    md, js = out / MARKDOWN, out / JSON
    write_atomic(md, lambda partial: partial.write_text(markdown, encoding="utf-8"))
    write_atomic(js, lambda partial: partial.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8"))
    written += [md, js]
    for key, fig in figures.items():
        png = out / FIGURES[key]
        write_atomic(png, lambda partial, fig=fig: fig.savefig(partial, dpi=DPI, format="png"))
        written.append(png)
    for name in WRITTEN:  # a stale figure of an earlier comparison (--force) would read as this one's
        if out / name not in written:
            (out / name).unlink(missing_ok=True)
    return written


def all_figures(runs: list[Run], by_step: bool, relative: bool) -> tuple[dict[str, Figure], list[str]]:
    """The figures that overlay the runs and, for checkpoints of one model in step order,
    those against the training step; a line for each figure left out."""
    figures, skipped = comparison_figures(runs, relative)
    if by_step:
        more, more_skipped = step_figures(runs)
        figures.update(more)
        skipped += more_skipped
    return figures, skipped


def main(argv: list[str] | None = None) -> None:
    parser = OneLineArgumentParser(prog="lit_massive compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", metavar="RUN_OR_RESULTS", help="run directories or results.json files")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"directory to write the comparison into (default {DEFAULT_OUT}/); refused if it holds files, "
        "unless --force",
    )
    parser.add_argument(
        "--force", action="store_true", help="write into a non-empty --out, replacing an earlier comparison's files"
    )
    parser.add_argument(
        "--relative-depth",
        action="store_true",
        help="x axis of the depth figures: block / (blocks - 1), 0..1, so models of different depth line up "
        "(default: block index)",
    )
    args = parser.parse_args(argv)
    runs = load_runs(args.runs)  # every input error before anything is printed or written
    check_out_dir(args.out, args.force)
    by_step, no_step_figures = order_by_step(runs)
    runs = by_step or runs
    rows = comparison_rows(runs)
    lines = notes(runs, rows)
    if by_step:
        lines.append(f"runs in training-step order: checkpoints of {step_model(by_step)}")
    figures, skipped = all_figures(runs, by_step is not None, args.relative_depth)
    if no_step_figures:
        skipped.append(no_step_figures)
    names = [FIGURES[key] for key in figures]
    same_model = against_reference(runs)  # each run of the first run's model against it
    content = {
        "runs": [
            {
                "label": r.label,
                "path": str(r.path),
                "training_step": training_step(r.results),
                "interrupted": r.interrupted,
            }
            for r in runs
        ],
        "by_training_step": by_step is not None,
        "rows": rows,
        "tokenizers_differ": tokenizers_differ(runs),
        "notes": lines,
        "figures": names,
        "relative_depth": args.relative_depth,
        KEY: same_model,
    }
    markdown = comparison_markdown(rows, lines, names) + reference_markdown(same_model)
    write_comparison(args.out, markdown, content, figures)
    print(terminal_table(rows, lines))
    for line in reference_lines(same_model):
        print(line)
    for line in skipped:
        print(line)
    print(f"Comparison: {args.out} ({MARKDOWN}, {JSON}, {', '.join(names)})")
