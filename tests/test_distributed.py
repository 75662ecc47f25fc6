"""Two processes give the numbers of one: nothing repeated, dropped or averaged inexactly."""

import json
import subprocess
import sys

import pytest

from conftest import DEMO, run_validate


def _compare(a, b, path=""):
    """Every number equal to 1e-6 relative, every other value equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _compare(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _compare(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-12), path
    else:
        assert a == b, path


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
    root = tmp_path / "two"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lit_massive",
            "validate",
            *args,
            "--trainer.default_root_dir",
            str(root),
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "2",
            "--trainer.strategy",
            "ddp",
            "--trainer.enable_progress_bar",
            "false",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = root.glob("lightning_logs/*")
    double = json.loads((run_dir / "results.json").read_text())
    assert (single["world_size"], double["world_size"]) == (1, 2)
    assert double["variants"]["baseline"]["num_sequences"] == 5  # 3 + 2: none repeated or dropped
    _compare(double["variants"], single["variants"])
