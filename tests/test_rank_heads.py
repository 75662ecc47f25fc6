"""`rank-heads`: a ranking table and pruning configs that `validate` runs."""

import pytest

from helpers import DEMO, run_validate


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
    """report/ranking.py (no torch) against `torch.argsort(-x, stable=True)`, the order it
    replaces: ties in (layer, head) order, NaN (null) last in both orders, +-inf and -0.0."""
    import random

    import torch

    from lit_massive.report.ranking import rank_heads
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
