"""Every value that `validate --help` or an error message lists as valid runs; a value the
tool cannot honour is refused in one line, before any run directory, naming what works."""

from __future__ import annotations

import re
from unittest import mock

import pytest
import torch

from helpers import DEMO, cli_output, run_validate
from lit_massive.cli import cli_main

SMALL = ("--data.num_sequences", "2", "--data.batch_size", "2")
ON_CPU = {"16-mixed": "bf16-mixed"}  # Lightning runs 16-mixed as bf16-mixed on a CPU (run_validate's accelerator)


def _error(tmp_path, *args: str) -> str:
    """The one-line message of a run refused before any run directory."""
    with pytest.raises(SystemExit) as info:
        run_validate(tmp_path, "--config", DEMO, *SMALL, *args)
    message = str(info.value.code)
    assert message.startswith("lit_massive: error: ") and "\n" not in message, message
    assert not list(tmp_path.glob("lightning_logs/*")), message
    return message


def _listed(message: str) -> list[str]:
    """The values after `valid...: ` in an error message, up to the next `;` or `(`."""
    found = re.search(r"valid[^:]*: ([^;(]+)", message)
    assert found, message
    return [v.strip() for v in found.group(1).split(",") if v.strip()]


def _help_block(capsys, option: str) -> str:
    """`validate --help`'s text for `option`, its lines joined."""
    text = cli_output(capsys, "validate", "--help")
    block = re.search(rf"^  {re.escape(option)} [A-Z_]+\n((?:  {{5,}}.*\n)+)", text, re.M)
    assert block, option
    return " ".join(block.group(1).split())


def test_the_precisions_an_error_lists_are_the_ones_help_lists(tmp_path, capsys):
    listed = _listed(_error(tmp_path, "--trainer.precision", "8-true"))
    assert set(listed) >= {"32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true"}
    help_text = _help_block(capsys, "--trainer.precision")
    for offered in re.findall(r"'([^']+)'", help_text):
        assert offered in listed, (offered, help_text)
    for unsupported in ("64-true", "transformer-engine"):
        assert unsupported not in listed and unsupported not in help_text


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_every_listed_precision_runs(tmp_path):
    listed = _listed(_error(tmp_path / "typo", "--trainer.precision", "8-true"))
    for precision in listed:
        if precision == "null":
            continue
        _, results = run_validate(tmp_path / precision, "--config", DEMO, *SMALL, "--trainer.precision", precision)
        assert results["precision"] == ON_CPU.get(precision, precision)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--trainer.precision", "64-true"], ["trainer.precision='64-true' is not valid", "32-true", "bf16-mixed"]),
        (["--trainer.precision", "transformer-engine"], ["'transformer-engine' is not valid", "32-true"]),
        (["--trainer.devices", "-2"], ["trainer.devices=-2", "valid", ">= 1"]),
        (["--trainer.devices", "0"], ["trainer.devices=0", "valid", ">= 1"]),
        (["--trainer.devices", "-1"], ["trainer.devices=-1", "cpu", ">= 1"]),
        (["--trainer.fast_dev_run", "true"], ["trainer.fast_dev_run=true", "nothing is written", "valid: false"]),
        (["--trainer.fast_dev_run", "2"], ["trainer.fast_dev_run=2", "valid: false"]),
        (["--trainer.limit_val_batches", "0"], ["trainer.limit_val_batches=0", "measures nothing", "null"]),
        (["--trainer.limit_val_batches", "0.0"], ["trainer.limit_val_batches=0.0", "measures nothing", "null"]),
        (["--trainer.limit_val_batches", "-1"], ["trainer.limit_val_batches=-1", ">= 1", "null"]),
        (["--trainer.limit_val_batches", "1.5"], ["trainer.limit_val_batches=1.5", "(0, 1]"]),
        (["--trainer.limit_val_batches", "0.1"], ["trainer.limit_val_batches=0.1", "1 batch", ">= 1.0"]),
        (["--model.attn_implementation", "sdpaa"], ["attn_implementation='sdpaa'", "did you mean sdpa", "eager"]),
    ],
)
def test_values_the_tool_cannot_honour_are_refused_in_one_line(tmp_path, args, expected):
    message = _error(tmp_path, *args)
    assert all(part in message for part in expected), message


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("accelerator", ["gpu", "cuda", "gpuu", "hpu"])
def test_an_accelerator_this_machine_lacks_lists_the_ones_it_has(tmp_path, accelerator):
    message = _error(tmp_path, "--trainer.accelerator", accelerator)
    assert f"trainer.accelerator={accelerator!r}" in message and _listed(message) == ["auto", "cpu"], message


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_every_listed_attention_implementation_runs(tmp_path):
    message = _error(tmp_path / "typo", "--model.attn_implementation", "sdpaa")
    listed = _listed(message)
    assert "eager" in listed and "sdpa" in listed and "null" in message
    for name in listed:
        _, results = run_validate(tmp_path / name, "--config", DEMO, *SMALL, "--model.attn_implementation", name)
        assert results["model"]["attn_implementation"] == name


@pytest.mark.parametrize("name", ["flex_attention", "flash_attention_2"])
def test_an_attention_implementation_the_model_or_machine_lacks_is_one_line(tmp_path, name):
    message = _error(tmp_path, "--model.attn_implementation", name)
    assert f"attn_implementation={name!r}" in message and "eager" in message, message


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_a_saved_config_with_the_trainer_defaults_still_runs(tmp_path):
    """config.yaml of an earlier run lists `fast_dev_run: false`, `precision: null` and
    `limit_val_batches: null`: a rerun of it must still parse."""
    config = tmp_path / "saved.yaml"
    config.write_text(
        "trainer:\n  precision: null\n  fast_dev_run: false\n  limit_val_batches: null\n  devices: auto\n"
        "  accelerator: auto\n"
    )
    _, results = run_validate(tmp_path, "--config", DEMO, "--config", str(config), *SMALL)
    assert results["precision"] == "32-true"


def test_help_offers_no_value_that_cannot_run(capsys):
    for option, absent in [
        ("--trainer.fast_dev_run", ["1 if set to ``True``"]),
        ("--trainer.accelerator", ['"hpu"', '"tpu"']),
    ]:
        text = _help_block(capsys, option)
        assert not any(a in text for a in absent), text


def test_cli_main_in_process_exit_code(tmp_path):
    """`cli_main` itself (not the helper) ends a refused run with a non-zero exit and one line."""
    with mock.patch("sys.argv", ["lit_massive"]), pytest.raises(SystemExit) as info:
        cli_main(
            ["validate", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path), "--trainer.fast_dev_run", "1"]
        )
    assert str(info.value.code).startswith("lit_massive: error: trainer.fast_dev_run=1")
    assert not list(tmp_path.glob("lightning_logs/*"))
