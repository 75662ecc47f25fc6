"""`rank-heads`: a ranking table and pruning configs that `validate` runs."""

from conftest import DEMO, run_validate


def test_rank_heads_writes_runnable_configs(tmp_path, capsys):
    run_dir, _ = run_validate(
        tmp_path,
        "--config",
        DEMO,
        "--data.num_sequences",
        "2",
        "--model.head_scores",
        "true",
    )
    from lit_massive.cli import cli_main

    cli_main(["rank-heads", str(run_dir / "results.json"), "--k", "2"])
    table = capsys.readouterr().out
    assert "| 1 | 5 | 1 |" in table and "| 2 | 8 | 3 |" in table
    _, results = run_validate(tmp_path, "--config", str(run_dir / "pruning" / "prune_top2.yaml"))
    assert sorted(map(tuple, results["variants"]["prune_top2"]["pruned_heads"])) == [(5, 1), (8, 3)]
