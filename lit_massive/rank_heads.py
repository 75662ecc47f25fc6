"""`python -m lit_massive rank-heads RUN/results.json`: a head ranking and pruning configs.

Prints the heads ranked by first-token attention as a markdown table and writes
`prune_top{k}.yaml` and `prune_bottom{k}.yaml`: the run's own config.yaml (when it sits
beside results.json) with `model.variants` set, ready for `validate --config`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from torch import Tensor

from lit_massive.errors import InputError
from lit_massive.tables import markdown_table, ranked_heads
from lit_massive.variants import BASELINE, SCORES, load_scores, rank_heads


def ranking_markdown(scores: Tensor) -> str:
    """Every head, highest first-token attention first."""
    rows = [
        [str(i + 1), str(layer), str(head), f"{s:.4f}"]
        for i, (layer, head, s) in enumerate(ranked_heads(scores.tolist()))
    ]
    return markdown_table(["rank", "layer", "head", "score"], rows)


def write_pruning_configs(
    results: Path, k: int, out_dir: Path, variant: str = BASELINE, by: str = "first_token"
) -> list[Path]:
    """Write one config per order, pruning that order's first k heads by score `by`
    (first_token or massive_tokens); returns their paths."""
    scores = load_scores(str(results), variant, by)
    n_total = scores.numel()
    if not 1 <= k <= n_total:
        raise InputError(f"k={k} must be in 1..{n_total} (the number of heads)")
    run_config = results.parent / "config.yaml"
    base = yaml.safe_load(run_config.read_text()) if run_config.is_file() else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for order in ("top", "bottom"):
        path = out_dir / f"prune_{order}{k}.yaml"
        if path.exists():
            raise InputError(f"{path} already exists; choose another --out directory")
        config = {**base, "model": {**base.get("model", {})}}
        config["model"]["variants"] = {f"prune_{order}{k}": [list(h) for h in rank_heads(scores, order)[:k]]}
        config["model"]["sweep"] = None
        config.get("trainer", {}).pop("logger", None)  # a fresh version_N for the new run
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lit_massive rank-heads", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="results.json of a run with model.head_scores: true")
    parser.add_argument("--k", type=int, default=3, help="heads to prune in each config (default 3)")
    parser.add_argument("--variant", default=BASELINE, help="whose scores to rank (default baseline)")
    parser.add_argument("--out", type=Path, default=None, help="where to write configs (default RUN/pruning)")
    parser.add_argument(
        "--by",
        default="first_token",
        choices=sorted(SCORES),
        help="rank by attention on token 0 (default) or on each window's massive tokens",
    )
    args = parser.parse_args(argv)
    scores = load_scores(str(args.results), args.variant, args.by)
    print(ranking_markdown(scores))
    out = args.out or args.results.parent / "pruning"
    for path in write_pruning_configs(args.results, args.k, out, args.variant, args.by):
        print(f"wrote {path}")
