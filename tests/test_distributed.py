"""Two processes give the numbers of one: nothing repeated, dropped or averaged inexactly."""

import json

import pytest

from conftest import DEMO, assert_same_numbers, run_validate, run_validate_ddp


@pytest.mark.parametrize("streaming", ["false", "true"])
def test_two_processes_equal_one(tmp_path, corpus_jsonl, streaming):
    args = [
        "--config",
        DEMO,
        "--data.data_files",
        str(corpus_jsonl),
        "--data.streaming",
        streaming,
        "--data.num_sequences",
        "5",
        "--data.batch_size",
        "2",
        "--model.head_scores",
        "true",
        "--model.variants",
        json.dumps({"pruned": [[5, 1], [2, 7]], "low": {"select": "bottom", "k": 2}}),
    ]
    _, single = run_validate(tmp_path / "one", *args)
    double = run_validate_ddp(tmp_path / "two", *args)
    assert (single["world_size"], double["world_size"]) == (1, 2)
    assert double["variants"]["baseline"]["num_sequences"] == 5  # 3 + 2: none repeated or dropped
    assert_same_numbers(double["variants"], single["variants"])
