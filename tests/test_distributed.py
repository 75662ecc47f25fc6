"""Two DDP processes give the numbers of one even where the order of windows decides ties.

Two processes equal one, with every variant form, in test_sharding: the toy sharded (with
streamed text), a Llama sharded, and that Llama under DDP and sharded as two torchrun nodes."""

import json
from collections import Counter, defaultdict

import pytest
from transformers import AutoModelForCausalLM

from helpers import (
    assert_same_numbers,
    reference_block_outputs,
    reference_windows,
    run_validate,
    run_validate_ddp,
    tiny_run_args,
)

pytestmark = pytest.mark.slow  # a DDP run: two processes


def _tied_groups(model_dir, jsonl, seq_len, n, thr, ratio) -> int:
    """Located (layer, dim, position) whose most frequent token is a tie that the order of
    the windows decides: first seen in windows 0, 1, 2, ... (one process) differs from
    first seen in windows 0, 2, ..., 1, 3, ... (two processes)."""
    windows = reference_windows(model_dir, jsonl, seq_len, seq_len, n)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    groups: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
    for layer, x in enumerate(reference_block_outputs(model, windows)):
        a = x.abs().flatten(1)
        hit = (a > thr) & (a > ratio * a.median(dim=1).values[:, None])
        for b, flat in hit.nonzero().tolist():
            position, dim = divmod(flat, x.shape[2])
            groups[(layer, dim, position)].append((b, int(windows[b, position])))
    tied = 0
    for hits in groups.values():
        counts = Counter(t for _, t in hits)
        best = max(counts.values())
        one = next(t for _, t in sorted(hits) if counts[t] == best)
        two = next(t for _, t in sorted(hits, key=lambda h: (h[0] % 2, h[0])) if counts[t] == best)
        tied += one != two
    return tied


def test_two_processes_equal_one_when_locator_tokens_tie(tmp_path, tiny_gpt2_dir, corpus_jsonl):
    seq_len, n, thr, ratio = 16, 6, 0.0, 3.0
    assert _tied_groups(tiny_gpt2_dir, corpus_jsonl, seq_len, n, thr, ratio) > 0  # the case has ties
    args = tiny_run_args(
        tiny_gpt2_dir,
        corpus_jsonl,
        seq_len,
        n,
        2,
        "--model.massive_threshold",
        str(thr),
        "--model.massive_ratio",
        str(ratio),
        "--model.analyses.perplexity.enabled",
        "false",
    )
    _, single = run_validate(tmp_path / "one", *args)
    double = run_validate_ddp(tmp_path / "two", *args)
    massive = single["variants"]["baseline"]["massive"]
    assert len(massive) > 10
    assert double["variants"]["baseline"]["massive"] == massive  # tokens and values, exactly
    assert_same_numbers(double["variants"], single["variants"])


def test_two_processes_equal_one_for_edits_at_every_layer(tmp_path, family_dir, corpus_jsonl):
    """Edits at `layer: all` on the tiny Llama (BOS and "." massive tokens): the control's
    draws (seeded per window), the first pass's means and the per-block counts of what each
    edit changed (summed over processes) are those of one process."""
    variants = {
        "zero": {"set_massive": {"layer": "all", "to": "zero", "positions": "rest"}},
        "mean": {"set_massive": {"layer": "all", "to": "mean"}},
        "control": {"set_random": {"layer": "all", "seed": 5}},
    }
    args = tiny_run_args(family_dir("llama"), corpus_jsonl, 24, 5, 2, "--model.variants", json.dumps(variants))
    _, single = run_validate(tmp_path / "one", *args)
    double = run_validate_ddp(tmp_path / "two", *args)
    assert double["world_size"] == 2 and single["world_size"] == 1
    for name in variants:  # each edited something, in windows of both processes (zero: at block 0 only)
        assert sum(b["edited"] for b in single["variants"][name]["edit"]["blocks"]) > 0, name
    assert_same_numbers(double["variants"], single["variants"])


@pytest.mark.parametrize("strategy", ["ddp", "model_parallel"])
def test_two_processes_equal_one_for_super_weights(tmp_path, corpus_jsonl, strategy):
    """The super-weight rows are gathered rank by rank (another order than one process's):
    the per-block entries and candidates do not depend on it; sharded (FSDP2), the weight is
    read while its layer is whole."""
    from test_super_weights import COL, PLANT_LAYER, ROW, WEIGHT, _plant

    model_dir = _plant("llama", tmp_path / "planted")
    args = tiny_run_args(
        model_dir, corpus_jsonl, 24, 5, 2, "--model.analyses.super_weights.enabled", "true"
    )  # 3 + 2 windows
    _, single = run_validate(tmp_path / "one", *args)
    double = run_validate_ddp(tmp_path / "two", *args, strategy=strategy)
    assert double["world_size"] == 2
    found = single["variants"]["baseline"]["super_weights"]
    assert [(c["layer"], c["row"], c["col"], c["weight"], c["windows"]) for c in found] == [
        (PLANT_LAYER, ROW, COL, WEIGHT, 5)
    ]
    for key in ("mlp_down", "super_weights"):
        assert_same_numbers(double["variants"]["baseline"][key], single["variants"]["baseline"][key], key)


def test_two_processes_equal_one_for_outlier_stats(tmp_path, tiny_gpt2_dir, corpus_jsonl):
    """Kurtosis, top-direction share and matrix entropy are sums over windows synced across
    processes: 5 windows split 3 + 2 give the numbers of one process."""
    keys = ("kurtosis", "top_direction_share", "matrix_entropy", "outlier_left_out")
    args = tiny_run_args(
        tiny_gpt2_dir,
        corpus_jsonl,
        16,
        5,
        2,
        "--model.analyses.outlier_stats.enabled",
        "true",
        "--model.analyses.perplexity.enabled",
        "false",
        "--model.variants",
        '{"cut": [[1, 2]]}',
    )
    _, single = run_validate(tmp_path / "one", *args)
    double = run_validate_ddp(tmp_path / "two", *args)
    for name in ("baseline", "cut"):
        one = [{k: row[k] for k in keys} for row in single["variants"][name]["layers"]]
        two = [{k: row[k] for k in keys} for row in double["variants"][name]["layers"]]
        assert all(row[k] is not None for row in one for k in keys)
        assert_same_numbers(two, one, name)
