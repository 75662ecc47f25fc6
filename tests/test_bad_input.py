"""Each bad input stops the run before any work with one line naming the value."""

import json
import os
import socket
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import DEMO, REPO, run_validate


def _error(tmp_path, *args) -> str:
    """The one-line message; and no run directory (not even an empty one) was created."""
    with pytest.raises(SystemExit) as info:
        run_validate(tmp_path, "--config", DEMO, *args)
    message = str(info.value.code)
    assert message.startswith("lit_massive: error: ") and "\n" not in message
    assert not list(tmp_path.glob("lightning_logs/*"))
    return message


@pytest.mark.parametrize("name", ["compare", "summary", "a/b", " "])
def test_a_variant_named_like_a_run_level_group_or_not_a_folder_name(tmp_path, name):
    """A variant is a TensorBoard run (RUN/variants/VARIANT) and the first part of its tags."""
    msg = _error(tmp_path, "--model.variants", json.dumps({name: [[1, 0]]}))
    assert f"variant name {name!r} is not usable" in msg and "compare, feature_view" in msg


def test_missing_local_model_path(tmp_path):
    msg = _error(tmp_path, "--model.model_name_or_path", "./no/such/model")
    assert "'./no/such/model'" in msg and "does not exist" in msg


def test_hub_id_while_offline_says_how_to_use_a_local_copy(tmp_path):
    start = time.monotonic()
    msg = _error(tmp_path, "--model.model_name_or_path", "gpt2")
    assert "'gpt2'" in msg and "Offline?" in msg and "save_pretrained" in msg and "toy" in msg
    assert "HF_HUB_OFFLINE=1" in msg
    assert time.monotonic() - start < 30


def test_dataset_hub_id_while_offline(tmp_path):
    msg = _error(tmp_path, "--data.dataset", "Salesforce/wikitext")
    assert "'Salesforce/wikitext'" in msg and "data.data_files" in msg


def test_seq_len_above_context(tmp_path):
    msg = _error(tmp_path, "--data.seq_len", "257")
    assert "seq_len=257" in msg and "256" in msg


def test_fewer_windows_than_num_sequences(tmp_path):
    msg = _error(tmp_path, "--data.num_sequences", "100000")
    assert "num_sequences=100000" in msg and "windows" in msg


def test_missing_data_file(tmp_path):
    msg = _error(tmp_path, "--data.data_files", str(tmp_path / "nope.parquet"))
    assert "nope.parquet" in msg and "does not exist" in msg


def test_empty_data_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    msg = _error(tmp_path, "--data.data_files", str(empty))
    assert "empty.txt" in msg and "no text" in msg


def test_text_less_data_file(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"body": "Summer is warm ."}) + "\n")
    msg = _error(tmp_path, "--data.data_files", str(rows))
    assert "rows.jsonl" in msg and "no 'text' column" in msg and "body" in msg


def test_a_second_run_into_the_same_directory_changes_nothing(tmp_path):
    fixed = [
        "--trainer.logger",
        "lightning.pytorch.loggers.TensorBoardLogger",
        "--trainer.logger.save_dir",
        str(tmp_path),
        "--trainer.logger.version",
        "fixed",
    ]
    run_validate(tmp_path, "--config", DEMO, "--data.num_sequences", "2", *fixed)
    results = tmp_path / "lightning_logs" / "fixed" / "results.json"
    before = results.read_bytes()
    with pytest.raises(SystemExit, match="results.json already exists"):
        run_validate(tmp_path, "--config", DEMO, "--data.num_sequences", "3", *fixed)
    assert results.read_bytes() == before


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_text_less_table_leaves_no_run_directory(tmp_path, capfd, suffix):
    rows = tmp_path / f"rows{suffix}"
    if suffix == ".parquet":
        pq.write_table(pa.table({"body": ["Summer is warm ."] * 4}), rows)
    elif suffix == ".csv":
        rows.write_text("body\nSummer is warm .\n")
    else:
        rows.write_text(json.dumps({"body": "Summer is warm ."}) + "\n")
    capfd.readouterr()
    msg = _error(tmp_path, "--data.data_files", str(rows))
    assert f"rows{suffix}" in msg and "no 'text' column" in msg and "body" in msg
    assert "Generating" not in capfd.readouterr().err  # no library progress line before the error


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--data.tokenizer", "./no/such/tokenizer"], ["'./no/such/tokenizer'", "does not exist"]),
        (["--model.top_k", "0"], ["top_k=0", "must be > 0"]),
        (["--model.dtype", "float8"], ["dtype='float8'", "float32", "bfloat16", "auto"]),
        (["--model.top_k", "100000"], ["top_k=100000", "128 tokens x 96 dims", "top_k <= 12288"]),
        (["--model.analyses.feature_view.layers", "[50]"], ["feature_view.layers=[50]", "0..11"]),
        (["--trainer.precision", "8-true"], ["trainer.precision='8-true'", "bf16-mixed", "32-true"]),
        (["--data.bos", "maybe"], ["data.bos='maybe' is not valid; valid: true, false, auto"]),
        (["--model.trust_remote_code", "maybe"], ["trust_remote_code='maybe' is not valid; valid: true, false"]),
        (["--config", "no_such.yaml"], ["no_such.yaml", "neither an existing file nor a bundled config", "demo"]),
        (["--data.stride", "512"], ["stride=512", "seq_len=128", "stride <= 128"]),
        (["--model.massive_threshold", "-1"], ["massive_threshold=-1", ">= 0"]),
        (["--model.massive_ratio", "-5"], ["massive_ratio=-5", ">= 0"]),
        (["--model.top_kk", "3"], ["--model.top_kk"]),
        (["--model.topk", "3"], ["unrecognized arguments: --model.topk 3 (did you mean --model.top_k?)"]),
        (["--trainer.devics", "1"], ["(did you mean --trainer.devices?)"]),
        (
            ["--data.num_sequences", "1", "--trainer.devices", "2", "--trainer.strategy", "ddp"],
            ["1 windows for 2 processes", "num_sequences >= 2"],
        ),
    ],
)
def test_late_or_unreadable_errors_are_one_line_and_leave_nothing(tmp_path, args, expected):
    msg = _error(tmp_path, *args)
    assert all(part in msg for part in expected), msg


def test_tokenizer_directory_without_files(tmp_path):
    empty = tmp_path / "tok"
    empty.mkdir()
    msg = _error(tmp_path, "--data.tokenizer", str(empty))
    assert str(empty) in msg


def test_a_config_key_that_does_not_exist_gets_the_closest_one(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("model:\n  topk: 3\n")
    msg = _error(tmp_path, "--config", str(config))
    assert msg.endswith("does not accept option 'model.topk' (did you mean model.top_k?)"), msg


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "is empty"),
        ("# only a comment\n", "is empty"),
        ("- model\n- data\n", "holds a list"),
        ("just words\n", "holds the value 'just words'"),
    ],
)
def test_a_config_that_is_no_mapping_says_what_a_config_is(tmp_path, text, expected):
    config = tmp_path / "odd.yaml"
    config.write_text(text)
    msg = _error(tmp_path, "--config", str(config))
    assert f"config {config} {expected}" in msg and "model:" in msg and "configs demo" in msg, msg
    assert "Unexpected config" not in msg


def test_a_results_json_given_as_config_says_what_to_give(tmp_path):
    run_dir, _ = run_validate(tmp_path, "--config", DEMO, "--data.num_sequences", "2")
    results = run_dir / "results.json"
    with pytest.raises(SystemExit) as info:
        run_validate(tmp_path / "again", "--config", str(results))
    msg = str(info.value.code)
    assert (
        msg.startswith(f"lit_massive: error: config {results} is a run's results.json, not a config")
        and "\n" not in msg
    )
    assert f"--config {run_dir / 'config.yaml'}" in msg and "rank-heads" in msg and "does not accept" not in msg
    assert not list((tmp_path / "again").glob("lightning_logs/*"))


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("model:\n  top_k: 3\n  variants: [[1, 2]\ndata:\n  seq_len: 64\n")
    msg = _error(tmp_path, "--config", str(config))
    assert msg.startswith(f"lit_massive: error: config {config}, line 4, column 1: "), msg
    assert "flow sequence at line 3, column 13" in msg and "<unicode string>" not in msg


# the no-network check: one process (HF_HUB_OFFLINE unset, the hub an unreachable local port),
# the imports timed apart from the two loads that must fail at once
_NO_NETWORK = """
import sys, time
from lit_massive.cli import validate  # noqa: F401 (lightning, torch, transformers: imported before the clock)
from lit_massive.cli.main import cli_main
for args in (["--model.model_name_or_path", "gpt2"], ["--data.dataset", "Salesforce/wikitext"]):
    start = time.monotonic()
    try:
        cli_main(["validate", "--config", sys.argv[1], "--trainer.default_root_dir", sys.argv[2], *args])
    except SystemExit as err:
        print(f"{time.monotonic() - start:.2f} {err.code}")
"""


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_a_hub_id_without_network_fails_at_once_in_one_line(tmp_path):
    with socket.socket() as s:  # a port nothing listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", _NO_NETWORK, DEMO, str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if " lit_massive: error: " in line]
    assert len(lines) == 2, done.stdout
    for line, name in zip(lines, ("'gpt2'", "'Salesforce/wikitext'"), strict=True):
        seconds, message = line.split(" ", 1)
        assert float(seconds) < 5, line  # the libraries' retries took 30-50 s
        assert name in message and f"no connection to http://127.0.0.1:{port}" in message and "Offline?" in message
    assert "Retrying" not in done.stderr
    assert not list(tmp_path.glob("lightning_logs/*"))
