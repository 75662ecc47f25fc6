"""`python -m lit_massive rank-heads RUN`: a head ranking and pruning configs.

RUN is a run directory or its results.json, as for `compare`. Prints the top 10 and bottom 5
heads by first-token attention (every head with `--all`) as a markdown table and writes
`prune_top{k}.yaml` and `prune_bottom{k}.yaml` into RUN/pruning: the run's own config.yaml
with `model.variants` set, so `validate --config` reruns the same model and data with those
heads pruned. Bad input (`--k 0`, a config that exists, a variant the run does not have)
fails before any output.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from lit_massive.cli.console import OneLineArgumentParser
from lit_massive.errors import InputError
from lit_massive.results.names import BASELINE, SCORES
from lit_massive.results.ranking import Rows, rank_heads
from lit_massive.results.ranking import ranking_markdown as _ranking_markdown
from lit_massive.results.schema import RESULTS, ResultsFile, read_results

# no torch, transformers or lightning on this path (tests/test_startup.py): the scores are
# results.json rows, ranked in plain Python (results/ranking.py)

RUN_CONFIG = "config.yaml"  # what a CLI run saves beside its results.json (LightningCLI's SaveConfigCallback)


def _rows(scores) -> Rows:
    """(L, H) scores as rows; a tensor (what `load_scores` returns) is accepted too."""
    return scores.tolist() if hasattr(scores, "tolist") else scores


def ranking_markdown(scores, everything: bool = False) -> str:
    """The top 10 and bottom 5 heads by score, highest first; every head with `everything`."""
    return _ranking_markdown(_rows(scores), everything)


def results_file(given: str | Path) -> Path:
    """The results.json a run directory or results.json names (as `compare` reads its runs),
    so the run's directory (config.yaml, pruning/) is its folder whichever was given."""
    path = Path(given).expanduser()
    return path / RESULTS if path.is_dir() else path


def score_rows(results: ResultsFile, given: str, variant: str = BASELINE, by: str = "first_token") -> Rows:
    """The (L, H) scores `by` of `variant`; a one-line error naming the run's variants for a
    variant it does not have, or saying how to get the scores for one measured without them."""
    variants = results["variants"]
    if variant not in variants:
        names = ", ".join(variants)
        raise InputError(f"--variant {variant!r}: run {given!r} has no such variant; its variants: {names}")
    scores = variants[variant].get(SCORES[by])
    if scores is None:
        raise InputError(
            f"{given}: variant {variant!r} has no {SCORES[by]}; run it with model.analyses.head_scores.enabled: true"
        )
    return scores


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


def run_config(results: Path) -> dict | None:
    """The config the run was made with (config.yaml beside its results.json); None where
    there is none (a run of the Python API); a one-line error for one that is not a mapping."""
    path = results.parent / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not valid YAML ({type(err).__name__}); restore the run's config.yaml") from err
    if not isinstance(config, dict):
        raise InputError(f"{path} is not a config (not a mapping); restore the run's config.yaml")
    return config


def pruning_config(base: dict, name: str, heads: list[tuple[int, int]]) -> dict:
    """The run's config with one variant that prunes `heads`, no sweep, and no logger (a
    fresh version_N for the new run)."""
    config = {**base, "model": {**(base.get("model") or {})}}
    config["model"]["variants"] = {name: [list(h) for h in heads]}
    config["model"]["sweep"] = None
    if isinstance(config.get("trainer"), dict):
        config["trainer"] = {k: v for k, v in config["trainer"].items() if k != "logger"}
    return config


def write_configs(base: dict, scores: Rows, k: int, out_dir: Path) -> list[Path]:
    """Write one config per order into `out_dir`: the run's config `base` pruning that order's
    first k heads of `scores`; returns their paths."""
    paths = pruning_config_paths(scores, k, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for order, path in zip(("top", "bottom"), paths, strict=True):
        config = pruning_config(base, f"prune_{order}{k}", rank_heads(scores, order)[:k])
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return paths


def write_pruning_configs(
    run: str | Path, k: int, out_dir: Path, variant: str = BASELINE, by: str = "first_token"
) -> list[Path]:
    """`write_configs` for a run directory or results.json, ranking `variant`'s heads by score
    `by` (first_token, massive_tokens, or a figure of the attention internals)."""
    scores = score_rows(read_results(run, "run"), str(run), variant, by)
    return write_configs(run_config(results_file(run)) or {}, scores, k, out_dir)


def _no_config_line(results: Path, first: Path) -> str:
    """Said when the run left no config.yaml: the configs then hold only the variants."""
    return (
        f"lit_massive: note: {results.parent} has no {RUN_CONFIG} (not a CLI run): the configs set only "
        f"model.variants; give them after your own config (validate --config YOURS.yaml --config {first})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = OneLineArgumentParser(prog="lit_massive rank-heads", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "run",
        metavar="RUN_OR_RESULTS",
        help="a run directory of a run with model.analyses.head_scores.enabled: true, or its results.json",
    )
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
    results = read_results(args.run, "run")  # a missing run, or one that did not finish: one line
    path = results_file(args.run)
    out = args.out or path.parent / "pruning"
    scores = score_rows(results, args.run, args.variant, args.by)
    first, _ = pruning_config_paths(scores, args.k, out)  # bad input fails before anything is printed
    base = run_config(path)
    print(ranking_markdown(scores, args.all))
    if base is None:
        print(_no_config_line(path, first), file=sys.stderr)
    for written in write_configs(base or {}, scores, args.k, out):
        print(f"wrote {written}")
