"""`python -m lit_massive rank-heads RUN/results.json`: a head ranking and pruning configs.

Prints the top 10 and bottom 5 heads by first-token attention (every head with `--all`)
as a markdown table and writes `prune_top{k}.yaml` and `prune_bottom{k}.yaml`: the run's
own config.yaml (when it sits beside results.json) with `model.variants` set, ready for
`validate --config`. Bad input (`--k 0`, a config that exists) fails before any output.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from lit_massive.cli.console import OneLineArgumentParser
from lit_massive.errors import InputError
from lit_massive.report.ranking import BASELINE, SCORES, Rows, rank_heads
from lit_massive.report.ranking import ranking_markdown as _ranking_markdown
from lit_massive.report.schema import load_score_rows

# no torch, transformers or lightning on this path (tests/test_startup.py): the scores are
# results.json rows, ranked in plain Python (report/ranking.py)


def _rows(scores) -> Rows:
    """(L, H) scores as rows; a tensor (what `load_scores` returns) is accepted too."""
    return scores.tolist() if hasattr(scores, "tolist") else scores


def ranking_markdown(scores, everything: bool = False) -> str:
    """The top 10 and bottom 5 heads by score, highest first; every head with `everything`."""
    return _ranking_markdown(_rows(scores), everything)


def pruning_config_paths(scores, k: int, out_dir: Path) -> list[Path]:
    """Where the configs go; refuses a k out of range or a file that exists, before anything
    is printed or written."""
    n_total = sum(len(row) for row in _rows(scores))
    if not 1 <= k <= n_total:
        raise InputError(f"--k {k}: must be in 1..{n_total} (the number of heads)")
    paths = [out_dir / f"prune_{order}{k}.yaml" for order in ("top", "bottom")]
    for path in paths:
        if path.exists():
            raise InputError(f"{path} already exists; choose another --out directory or --k")
    return paths


def write_pruning_configs(
    results: Path, k: int, out_dir: Path, variant: str = BASELINE, by: str = "first_token"
) -> list[Path]:
    """Write one config per order, pruning that order's first k heads by score `by`
    (first_token or massive_tokens); returns their paths."""
    scores = load_score_rows(str(results), variant, by)
    paths = pruning_config_paths(scores, k, out_dir)
    run_config = results.parent / "config.yaml"
    base = yaml.safe_load(run_config.read_text()) if run_config.is_file() else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for order, path in zip(("top", "bottom"), paths, strict=True):
        config = {**base, "model": {**base.get("model", {})}}
        config["model"]["variants"] = {f"prune_{order}{k}": [list(h) for h in rank_heads(scores, order)[:k]]}
        config["model"]["sweep"] = None
        config.get("trainer", {}).pop("logger", None)  # a fresh version_N for the new run
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = OneLineArgumentParser(prog="lit_massive rank-heads", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="results.json of a run with model.head_scores: true")
    parser.add_argument("--k", type=int, default=3, help="heads to prune in each config (default 3)")
    parser.add_argument("--variant", default=BASELINE, help="whose scores to rank (default baseline)")
    parser.add_argument("--out", type=Path, default=None, help="where to write configs (default RUN/pruning)")
    parser.add_argument(
        "--by",
        default="first_token",
        choices=sorted(SCORES),
        help="rank by attention on token 0 (default), on each window's massive tokens (massive_tokens), or by "
        "any per-head figure of the attention internals (head_output_norm with bottom: the dormant heads)",
    )
    parser.add_argument("--all", action="store_true", help="list every head (default: top 10 and bottom 5)")
    args = parser.parse_args(argv)
    out = args.out or args.results.parent / "pruning"
    scores = load_score_rows(str(args.results), args.variant, args.by)
    pruning_config_paths(scores, args.k, out)  # bad input fails before anything is printed
    print(ranking_markdown(scores, args.all))
    for path in write_pruning_configs(args.results, args.k, out, args.variant, args.by):
        print(f"wrote {path}")
