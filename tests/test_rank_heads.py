"""`rank-heads`: a ranking table and pruning configs that `validate` runs."""

import json
import shutil

import pytest
import yaml

from helpers import DEMO, run_validate


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_rank_heads_of_a_run_directory_writes_its_config_into_its_pruning_folder(tmp_path, capsys):
    """The form the tool's messages suggest (a run directory): the configs go into that run's
    pruning/ and are its config.yaml with the variant set, so they rerun the same model and
    data (the toy, offline) with those heads pruned."""
    run_dir, first = run_validate(
        tmp_path,
        "--config",
        DEMO,
        "--data.num_sequences",
        "2",
        "--model.analyses.head_scores.enabled",
        "true",
    )
    from lit_massive.cli import cli_main

    cli_main(["rank-heads", str(run_dir), "--k", "2"])
    table = capsys.readouterr().out
    assert "| 1 | 5 | 1 |" in table and "| 2 | 8 | 3 |" in table
    assert sorted(p.name for p in (run_dir / "pruning").iterdir()) == ["prune_bottom2.yaml", "prune_top2.yaml"]
    assert not (run_dir.parent / "pruning").exists()
    own = yaml.safe_load((run_dir / "config.yaml").read_text())
    written = yaml.safe_load((run_dir / "pruning" / "prune_top2.yaml").read_text())
    assert written["model"].pop("variants") == {"prune_top2": [[5, 1], [8, 3]]}
    assert own["model"].pop("variants") is None and own["trainer"].pop("logger") is None
    assert written == own  # model, data and trainer as the run had them (sweep: null in both)
    _, results = run_validate(tmp_path, "--config", str(run_dir / "pruning" / "prune_top2.yaml"))
    assert sorted(map(tuple, results["variants"]["prune_top2"]["pruned_heads"])) == [(5, 1), (8, 3)]
    assert results["model"]["name_or_path"] == "toy" and results["data"] == first["data"]
    assert results["variants"]["baseline"]["layers"] == first["variants"]["baseline"]["layers"]


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    return run_validate(tmp_path_factory.mktemp("scored"), "--config", DEMO, "--data.num_sequences", "2")[0]


@pytest.mark.parametrize("case", ["k0", "exists", "k_too_large"])
def test_rank_heads_refuses_before_printing_anything(tmp_path, capsys, scored_run, case):
    from lit_massive.cli import cli_main

    out = tmp_path / "pruning"
    out.mkdir()
    k = {"k0": "0", "exists": "2", "k_too_large": "145"}[case]
    if case == "exists":
        (out / "prune_top2.yaml").write_text("model: {}\n")
    with pytest.raises(SystemExit) as info:
        cli_main(["rank-heads", str(scored_run / "results.json"), "--k", k, "--out", str(out)])
    message = str(info.value.code)
    assert message.startswith("lit_massive: error: ") and "\n" not in message
    assert ("prune_top2.yaml already exists" if case == "exists" else f"--k {k}: must be in 1..144") in message
    assert capsys.readouterr().out == ""
    assert sorted(p.name for p in out.iterdir()) == (["prune_top2.yaml"] if case == "exists" else [])


def test_rank_heads_prints_top_and_bottom_unless_all(capsys, scored_run, tmp_path):
    from lit_massive.cli import cli_main

    results = str(scored_run / "results.json")
    cli_main(["rank-heads", results, "--out", str(tmp_path / "a")])
    short = capsys.readouterr().out
    assert short.count("\n| ") == 10 + 1 + 5 and "| ... |" in short and "144 heads; --all lists every one" in short
    cli_main(["rank-heads", results, "--out", str(tmp_path / "b"), "--all"])
    assert capsys.readouterr().out.count("\n| ") == 144


def test_the_plain_python_ranking_orders_heads_as_torch_argsort():
    """results/ranking.py (no torch) against `torch.argsort(-x, stable=True)`, the order it
    replaces: ties in (layer, head) order, NaN (null) last in both orders, +-inf and -0.0."""
    import random

    import torch

    from lit_massive.results.ranking import rank_heads
    from lit_massive.variants import rank_heads as tensor_rank_heads

    rng = random.Random(0)
    pool = [0.0, -0.0, 1.0, -1.0, 0.5, float("nan"), None, float("inf"), -float("inf"), 1e-300]
    for _ in range(500):
        n_layer, n_head = rng.randint(1, 4), rng.randint(1, 5)
        draw = [rng.choice(pool) if rng.random() < 0.7 else rng.random() for _ in range(n_layer * n_head)]
        rows = [draw[layer * n_head : (layer + 1) * n_head] for layer in range(n_layer)]
        flat = torch.tensor([[float("nan") if v is None else v for v in row] for row in rows], dtype=torch.float64)
        flat = flat.flatten()
        for order in ("top", "bottom"):
            index = torch.argsort(-flat if order == "top" else flat, stable=True)
            expected = [(int(i) // n_head, int(i) % n_head) for i in index]
            assert rank_heads(rows, order) == expected, (rows, order)
            assert tensor_rank_heads(flat.view(n_layer, n_head), order) == expected


def _refusal(*argv: str) -> str:
    from lit_massive.cli import cli_main

    with pytest.raises(SystemExit) as info:
        cli_main(list(argv))
    message = str(info.value.code)
    assert message.startswith("lit_massive: error: ") and "\n" not in message
    return message


def test_a_run_directory_and_its_results_json_write_to_the_same_place(scored_run, tmp_path, capsys):
    run = tmp_path / "lightning_logs" / "toy" / "version_0"
    shutil.copytree(scored_run, run)
    from lit_massive.cli import cli_main

    cli_main(["rank-heads", str(run), "--k", "2"])
    capsys.readouterr()
    assert yaml.safe_load((run / "pruning" / "prune_top2.yaml").read_text())["data"]["dataset"] == "toy"
    message = _refusal("rank-heads", str(run / "results.json"), "--k", "2")
    assert f"{run / 'pruning' / 'prune_top2.yaml'} already exists" in message
    assert capsys.readouterr().out == ""


def _scores_file(directory, variants: dict) -> str:
    directory.mkdir(parents=True)
    (directory / "results.json").write_text(json.dumps({"variants": variants}))
    return str(directory)


def test_an_unknown_variant_is_named_with_the_runs_variants(tmp_path, capsys):
    scores = [[0.1, 0.9], [0.5, 0.2]]
    run = _scores_file(tmp_path / "run", {"baseline": {"head_scores": scores}, "cut": {"head_scores": None}})
    message = _refusal("rank-heads", run, "--variant", "nope")
    assert message.endswith(f"--variant 'nope': run '{run}' has no such variant; its variants: baseline, cut")
    message = _refusal("rank-heads", run, "--variant", "cut")  # there, but measured without head scores
    assert message.endswith("variant 'cut' has no head_scores; run it with model.analyses.head_scores.enabled: true")
    assert capsys.readouterr().out == "" and not (tmp_path / "run" / "pruning").exists()


@pytest.mark.parametrize("kind", ["unfinished", "not_a_run"])
def test_a_directory_without_results_json_is_named_as_such(tmp_path, capsys, kind):
    run = tmp_path / "lightning_logs" / "toy" / "version_0"
    run.mkdir(parents=True)
    if kind == "unfinished":  # what a run that failed or was stopped leaves: its config, no results
        (run / "config.yaml").write_text("model: {model_name_or_path: toy}\n")
    message = _refusal("rank-heads", str(run))
    expected = {
        "unfinished": f"run '{run}' has no results.json: the run did not finish",
        "not_a_run": f"run '{run}' has no results.json and is not a run directory",
    }[kind]
    assert expected in message and "does not exist" not in message
    assert capsys.readouterr().out == "" and not (run / "pruning").exists()


def test_a_run_without_config_yaml_gets_the_variants_and_a_note(tmp_path, capsys):
    """A run of the Python API (results.json only): the configs hold the variants, and one
    line says to give them after a config of one's own."""
    run = _scores_file(tmp_path / "run", {"baseline": {"head_scores": [[0.1, 0.9], [0.5, 0.2]]}})
    from lit_massive.cli import cli_main

    cli_main(["rank-heads", run, "--k", "1"])
    printed = capsys.readouterr()
    first = tmp_path / "run" / "pruning" / "prune_top1.yaml"
    assert printed.err.splitlines() == [
        f"lit_massive: note: {run} has no config.yaml (not a CLI run): the configs set only model.variants; "
        f"give them after your own config (validate --config YOURS.yaml --config {first})"
    ]
    assert yaml.safe_load(first.read_text()) == {"model": {"variants": {"prune_top1": [[0, 1]]}, "sweep": None}}
