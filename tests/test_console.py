"""What the terminal shows: exit status, one-line errors, no chatter, help, the result table."""

import json
import os
import re
import subprocess
import sys
from unittest import mock

import pytest

from helpers import DEMO, REPO, cli_output, run_validate
from lit_massive.cli import cli_main
from lit_massive.results.schema import read_results

# what the `lit-massive` console script runs (pip's wrapper passes cli_main()'s return to sys.exit)
CONSOLE_SCRIPT = "import sys; from lit_massive.cli import cli_main; sys.exit(cli_main())"


def _console(cwd, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", CONSOLE_SCRIPT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow  # the console script runs in a process, twice
def test_console_script_exit_status_and_terminal(tmp_path):
    done = _console(tmp_path, "validate", "--config", DEMO, "--data.num_sequences", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout + done.stderr
    assert "MassiveCLI object" not in out
    for chatter in ("GPU available", "TPU available", "💡 Tip", "Seed set", "LeafSpec"):
        assert chatter not in out
    assert "first massive" in done.stdout and "Run directory:" in done.stdout
    (run_dir,) = tmp_path.glob("lightning_logs/*/version_*")

    bad = _console(tmp_path, "validate", "--config", DEMO, "--trainer.precision", "8-true")
    assert bad.returncode != 0
    (line,) = bad.stderr.strip().splitlines()
    assert line.startswith("lit_massive: error: trainer.precision='8-true' is not valid; valid: ") and "32-true" in line
    assert list(tmp_path.glob("lightning_logs/*/version_*")) == [run_dir]


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+(?:\.\d+)?", cell)]


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_end_of_run_summary_equals_results(tmp_path, capsys):
    variants = {"sink": [[5, 1]], "writer": [[8, 3]]}
    _, results = run_validate(
        tmp_path, "--config", DEMO, "--data.num_sequences", "4", "--model.variants", json.dumps(variants)
    )
    out = capsys.readouterr().out
    assert out.count("first massive") == 1 and out.count("Run directory:") == 1
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("variant"))
    rows = {line.split()[0]: re.split(r"\s{2,}", line.strip()) for line in lines[start + 2 : start + 5]}
    assert list(rows) == ["baseline", "sink", "writer"]
    for name, cells in rows.items():
        v = results["variants"][name]
        assert cells[1] == str(v["first_massive_layer"])
        ratio, block = max((r["top1_over_median"], r["layer"]) for r in v["layers"])
        assert _numbers(cells[2]) == [pytest.approx(ratio, abs=0.05), block]
        assert _numbers(cells[3])[0] == pytest.approx(v["perplexity"], abs=5e-5)
        if name == "baseline":
            assert cells[4:] == ["-", "-", "-"]
            continue
        change = v["change_vs_baseline"]
        assert _numbers(cells[4])[0] == pytest.approx(change["mean_over_layers"]["top1_pct"], abs=5e-3)
        assert _numbers(cells[5])[0] == pytest.approx(change["perplexity_pct"], abs=5e-3)
    # the planted writer head: pruning (8, 3) removes what it writes from block 8 on, which
    # top-1 does not show; the largest change names the statistic and block
    pct, stat, block = re.match(r"([-+]\d+\.\d+) \((\w+), (\d+)\)", rows["writer"][6]).groups()
    assert float(pct) == pytest.approx(results["variants"]["writer"]["change_vs_baseline"][f"{stat}_pct"][int(block)],
                                       abs=5e-3)  # fmt: skip
    assert int(block) >= 8 and float(pct) < -30


def test_help_names_the_program_and_every_command_and_skips_training_options(capsys):
    main = cli_output(capsys, "--help")
    assert main.startswith("usage: lit_massive ") and "__main__" not in main
    assert "{validate,rank-heads,compare,configs,fetch}" in main
    validate = cli_output(capsys, "validate", "--help")
    assert validate.startswith("usage: lit_massive [options] validate")
    for option in ("--optimizer", "--lr_scheduler", "--ckpt_path", "gradient_clip_val", "max_epochs"):
        assert option not in validate
    assert "--trainer.precision" in validate and "--data.seq_len" in validate
    # 459 with model.gguf_file and model.revision (and their data.* links); 483 with qkv_dims,
    # qkv_massive_ratio, linear_inputs and tasks
    assert len(validate.splitlines()) < 490
    # the project's options come first, the Trainer's after them
    options = [line.split()[0] for line in validate.splitlines() if line.startswith("  --")]
    first = [next(i for i, o in enumerate(options) if o.startswith(p)) for p in ("--model.", "--data.", "--trainer.")]
    assert first == sorted(first)
    assert "--model.model_name_or_path" in validate.split("--trainer.", 1)[0].split("options:", 1)[-1]
    for command in ("validate", "rank-heads", "compare", "configs", "fetch"):  # each listed with its line of help
        assert re.search(rf"^\s+{command}\s+\S", main, re.M), command


def test_config_before_the_command(tmp_path):
    with mock.patch("sys.argv", ["lit_massive"]):
        cli_main(["-c", DEMO, "validate", "--data.num_sequences", "2", "--trainer.default_root_dir", str(tmp_path),
                  "--trainer.enable_progress_bar", "false"])  # fmt: skip
    (run_dir,) = tmp_path.glob("lightning_logs/*/version_*")
    assert read_results(run_dir / "results.json")["data"]["num_windows"] == 2


def test_a_run_warning_is_one_line(capsys):
    """The project's warnings (`RunWarning`) as one `lit_massive: warning:` line, not Python's
    file:line format with a source line under it; any other warning as Python shows it."""
    import warnings

    from lit_massive.cli.console import one_line_warnings
    from lit_massive.errors import RunWarning

    passed_on = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, *rest: passed_on.append((str(message), category))
        one_line_warnings("lit_massive")
        warnings.warn("variant 'p': head (1, 1) listed twice; pruned once", RunWarning, stacklevel=1)
        warnings.warn("a library's own", DeprecationWarning, stacklevel=1)
    assert capsys.readouterr().err.splitlines() == [
        "lit_massive: warning: variant 'p': head (1, 1) listed twice; pruned once"
    ]
    assert passed_on == [("a library's own", DeprecationWarning)]  # to the display it replaced


@pytest.mark.slow  # the console script in a process
def test_console_script_shows_a_run_warning_in_one_line(tmp_path):
    variants = json.dumps({"p": [[1, 1], [1, 1]]})
    done = _console(tmp_path, "validate", "--config", DEMO, "--data.num_sequences", "2", "--model.variants", variants)
    assert done.returncode == 0, done.stderr[-2000:]
    warned = [line for line in done.stderr.splitlines() if "listed twice" in line]
    assert warned == ["lit_massive: warning: variant 'p': head (1, 1) listed twice; pruned once"]
    assert "UserWarning" not in done.stderr and "warnings.warn" not in done.stderr


@pytest.mark.slow  # a process whose reader has left
def test_output_into_a_closed_pipe_ends_without_a_traceback(tmp_path):
    """`lit-massive configs | head -1`: the reader closes the pipe before the list is written."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CONSOLE_SCRIPT, "configs"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    proc.stdout.close()  # the only reader, gone before the process writes
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1
    assert err == "", err
