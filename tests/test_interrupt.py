"""Ctrl-C, and results files that an interrupt (or anything else) spoiled.

A run interrupted before its results are written leaves nothing (its directory is removed);
one interrupted while it writes figures keeps its results.json, complete, marked by an
INTERRUPTED file. Either way it ends with one line and a non-zero status, no traceback.
Every command that reads a results.json refuses an empty, truncated or foreign one in one
line. In-process runs raise the KeyboardInterrupt at a chosen point; the slow tests send a
real SIGINT to a `python -m lit_massive validate` process, timed by the files it writes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest

from helpers import DEMO, run_validate
from lit_massive.cli import cli_main
from lit_massive.report import callback, publisher
from lit_massive.report.callback import INTERRUPTED, shown
from lit_massive.results.schema import read_results

SMALL = ("--config", DEMO, "--data.num_sequences", "4")
PRUNED = json.dumps({"p1": [[1, 1]], "p2": [[2, 2]], "p3": [[3, 3]]})  # more figures: a longer write
PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


@pytest.fixture(autouse=True)
def sigint_handler():
    """Lightning ignores SIGINT while it shuts down after one, and restores the handler in its
    teardown (which a failed teardown never reaches): give pytest its own back."""
    before = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, before)


def runs(root: Path) -> list[Path]:
    return sorted(root.glob("lightning_logs/*/version_*"))


def assert_no_spoiled_files(root: Path) -> None:
    """No temporary file left, every results.json readable, every PNG whole."""
    assert not [p for p in root.rglob("*") if p.name.endswith(".partial")]
    for path in root.rglob("results.json"):
        read_results(path)
    for path in root.rglob("*.png"):
        data = path.read_bytes()
        assert data.startswith(PNG_START) and data.endswith(PNG_END), path


def interrupted(root: Path, capfd, *args: str) -> tuple[int | str | None, list[str]]:
    """An in-process run that ends in a KeyboardInterrupt raised by a patch: its exit code
    and the non-empty lines it printed."""
    with pytest.raises(SystemExit) as info:
        run_validate(root, *SMALL, *args)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "Detected KeyboardInterrupt" not in out + err
    return info.value.code, [line for line in (out + err).splitlines() if line.strip()]


def removed_line(run_dir: Path) -> str:
    return f"lit_massive: interrupted: run directory {shown(run_dir)} removed (no results written)"


def test_interrupt_while_measuring_removes_the_run(tmp_path, capfd):
    def step(self, *args, **kwargs):
        raise KeyboardInterrupt

    with mock.patch("lit_massive.module.MassiveActivations.validation_step", step):
        code, lines = interrupted(tmp_path, capfd)
    assert code == 1
    assert lines == [removed_line(tmp_path / "lightning_logs" / "toy" / "version_0")]
    assert runs(tmp_path) == []


def test_interrupt_while_loading_the_model_removes_the_run(tmp_path, capfd):
    """Lightning's own teardown then fails (the model is still on the meta device): no traceback."""

    def load(self):
        raise KeyboardInterrupt

    with mock.patch("lit_massive.module.MassiveActivations.load_model", load):
        code, lines = interrupted(tmp_path, capfd)
    assert code == 1
    assert lines == [removed_line(tmp_path / "lightning_logs" / "toy" / "version_0")]
    assert runs(tmp_path) == []


def test_interrupt_while_writing_results_json_leaves_no_half_file(tmp_path, capfd):
    def half(content, f, **kwargs):
        f.write(json.dumps(content)[:200])
        f.flush()
        raise KeyboardInterrupt

    with mock.patch.object(callback, "json", SimpleNamespace(dump=half)):
        code, lines = interrupted(tmp_path, capfd)
    assert code == 1
    assert lines == [removed_line(tmp_path / "lightning_logs" / "toy" / "version_0")]
    assert runs(tmp_path) == [] and not list(tmp_path.rglob("*results.json*"))


def test_interrupt_while_writing_figures_keeps_complete_results(tmp_path, capfd):
    real, calls = publisher.imsave, []

    def imsave(path, *args, **kwargs):  # the third PNG: half written, then Ctrl-C
        calls.append(path)
        if len(calls) == 3:
            Path(path).write_bytes(PNG_START + b"half")
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    with mock.patch.object(publisher, "imsave", imsave):
        code, lines = interrupted(tmp_path, capfd, "--model.variants", PRUNED)
    (run_dir,) = runs(tmp_path)
    assert code == 1
    assert lines == [
        f"lit_massive: interrupted while writing figures; {shown(run_dir / 'results.json')} is complete, "
        f"figures and TensorBoard data may not be (marked {INTERRUPTED})"
    ]
    results = read_results(run_dir)
    assert list(results["variants"]) == ["baseline", "p1", "p2", "p3"]
    assert "results.json is complete" in (run_dir / INTERRUPTED).read_text()
    assert len(list(run_dir.glob("figures/*.png"))) == 2
    assert_no_spoiled_files(tmp_path)
    (events,) = run_dir.glob("events.out.tfevents.*")
    assert b"run/interrupted" in events.read_bytes()  # the TensorBoard text card
    cli_main(["rank-heads", str(run_dir), "--k", "2"])  # its results read as any run's
    assert "| 1 |" in capfd.readouterr().out


def test_a_ctrl_c_that_c_code_swallowed_still_interrupts_the_writing(tmp_path, capfd):
    """A real SIGINT while the second PNG is written, whose KeyboardInterrupt the code it
    lands in catches and drops (as C code that runs Python code and clears its errors does):
    the press is kept, and the run ends as interrupted at the next analysis, not complete."""
    real, calls = publisher.imsave, []

    def imsave(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)  # the handler runs here
            except KeyboardInterrupt:
                pass  # swallowed
        return real(path, *args, **kwargs)

    with mock.patch.object(publisher, "imsave", imsave):
        code, lines = interrupted(tmp_path, capfd, "--model.variants", PRUNED)
    (run_dir,) = runs(tmp_path)
    assert code == 1
    assert lines[-1].startswith("lit_massive: interrupted while writing figures;")
    assert (run_dir / INTERRUPTED).is_file()
    written = len(list(run_dir.glob("figures/*.png")))
    assert 2 <= written < len(calls) + 1 and written < 20  # it stopped after the analysis it was in
    assert signal.getsignal(signal.SIGINT) in (signal.default_int_handler, signal.SIG_IGN)  # not ours
    assert_no_spoiled_files(tmp_path)


def test_without_a_ctrl_c_the_writing_handler_is_put_back(tmp_path):
    run_validate(tmp_path, *SMALL)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with callback.kept_ctrl_c() as ctrl_c:
        assert signal.getsignal(signal.SIGINT) == ctrl_c.handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_interrupt_before_the_run_writes_nothing(tmp_path, capfd):
    def check(self, seq_len, largest_id):
        raise KeyboardInterrupt

    with mock.patch("lit_massive.module.MassiveActivations.check_windows", check):
        code, _ = interrupted(tmp_path, capfd)
    assert code == "lit_massive: interrupted before the run started; nothing was written"
    assert runs(tmp_path) == []


def test_interrupt_after_the_run_says_it_is_complete(tmp_path, capfd):
    with mock.patch("lit_massive.cli.validate.terminal_summary", side_effect=KeyboardInterrupt):
        code, _ = interrupted(tmp_path, capfd)
    (run_dir,) = runs(tmp_path)
    assert code == f"lit_massive: interrupted after the run was written; {shown(run_dir)} is complete"
    assert not (run_dir / INTERRUPTED).exists()
    read_results(run_dir)


def test_removal_keeps_files_from_before_the_run(tmp_path):
    """A run directory given by hand (`measure(run_dir=...)`) may hold the user's files."""
    theirs = tmp_path / "notes.txt"
    theirs.write_text("mine")
    old_config = tmp_path / "config.yaml"
    old_config.write_text("old: true")
    past = time.time() - 3600
    os.utime(old_config, (past, past))
    report = callback.RunReport()
    (tmp_path / "hparams.yaml").write_text("{}")
    (tmp_path / ".results.json.partial").write_text("{")
    assert not callback.remove_unfinished(tmp_path, report.started)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "notes.txt"]


# --- a real SIGINT to a process -------------------------------------------------------


def start(root: Path, *args: str) -> subprocess.Popen:
    """`python -m lit_massive validate` under `root`, with SIGINT's default disposition (a
    shell that started pytest in the background may have left it ignored)."""
    return subprocess.Popen(
        [sys.executable, "-m", "lit_massive", "validate", "--trainer.default_root_dir", str(root), *args],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the moment to interrupt it:\n{proc.stdout.read()[-3000:]}")
        assert time.monotonic() < end, "the run never got there"
        time.sleep(0.005)


def _catches_sigint(pid: int) -> bool | None:
    """Whether the process had a handler for SIGINT (Linux's SigCgt mask), for a failure's message."""
    try:
        mask = re.search(r"^SigCgt:\s+([0-9a-f]+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1)
    except (OSError, AttributeError):
        return None
    return bool(int(mask, 16) >> (signal.SIGINT - 1) & 1)


def finish(proc: subprocess.Popen, again_after: float | None = None) -> tuple[int, list[str]]:
    """Send SIGINT (and a second one `again_after` seconds later, while it shuts down); the
    exit status and the non-empty lines printed."""
    caught = _catches_sigint(proc.pid)
    proc.send_signal(signal.SIGINT)
    if again_after is not None:
        time.sleep(again_after)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert "Traceback" not in out and "Exception ignored" not in out, out[-3000:]
    assert proc.returncode != 0, f"the run ended as if not interrupted (SIGINT caught: {caught}):\n{out[-3000:]}"
    return proc.returncode, [line.strip() for line in out.replace("\r", "\n").splitlines() if line.strip()]


@pytest.mark.slow  # a process, interrupted
@pytest.mark.parametrize("again_after", [None, 0.05])
def test_sigint_while_measuring(tmp_path, again_after):
    run_dir = tmp_path / "lightning_logs" / "toy" / "version_0"
    # 200 windows one at a time: the pass lasts far longer than the wait for its first files
    proc = start(tmp_path, *SMALL, "--data.num_sequences", "200", "--data.stride", "16", "--data.batch_size", "1")
    wait_for(proc, lambda: (run_dir / "hparams.yaml").exists())
    time.sleep(0.5)
    status, lines = finish(proc, again_after)
    assert status != 0
    where = run_dir.relative_to(tmp_path)  # as the process, run in tmp_path, shows it
    assert lines[-1] == f"lit_massive: interrupted: run directory {where} removed (no results written)"
    assert all(line.startswith("Validation") for line in lines[:-1])  # the rest: the progress bar
    assert runs(tmp_path) == [] and not list(tmp_path.rglob("*results.json*"))


@pytest.mark.slow  # a process, interrupted
@pytest.mark.parametrize("again_after", [None, 0.05])
def test_sigint_while_writing(tmp_path, again_after):
    run_dir = tmp_path / "lightning_logs" / "toy" / "version_0"
    proc = start(tmp_path, *SMALL, "--model.variants", PRUNED, "--trainer.enable_progress_bar", "false")
    wait_for(proc, lambda: (run_dir / "results.json").exists())
    status, lines = finish(proc, again_after)
    assert status != 0
    assert lines == [
        f"lit_massive: interrupted while writing figures; {(run_dir / 'results.json').relative_to(tmp_path)} is "
        f"complete, figures and TensorBoard data may not be (marked {INTERRUPTED})"
    ]
    assert (run_dir / INTERRUPTED).is_file()
    assert list(read_results(run_dir)["variants"]) == ["baseline", "p1", "p2", "p3"]
    assert_no_spoiled_files(tmp_path)


# --- results files that are empty, truncated or not a results.json --------------------


@pytest.fixture(scope="module")
def spoiled(tmp_path_factory) -> dict[str, Path]:
    """A real results.json, and files that only look like one."""
    root = tmp_path_factory.mktemp("spoiled")
    run_dir, results = run_validate(root, "--config", DEMO, "--data.num_sequences", "2")
    text = (run_dir / "results.json").read_text()
    bad_scores = json.loads(text)
    bad_scores["variants"]["baseline"]["head_scores"] = [[0.5, 0.5], [0.5]]
    contents = {
        "empty": "",
        "truncated": text[: len(text) // 2],
        "a list": "[1, 2, 3]",
        "no variants": json.dumps({"model": {"name_or_path": "gpt2"}, "scores": [[1.0]]}),
        "a variant that is not an entry": json.dumps({"variants": {"baseline": 3}}),
        "ragged head scores": json.dumps(bad_scores),
        "not text": b"\xff\xfe\x00garbage",
    }
    paths = {}
    for name, content in contents.items():
        path = root / f"{name.replace(' ', '_')}.json"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        paths[name] = path
    return paths


EXPECTED = {  # what each refusal says, after the file's name
    "empty": "is empty",
    "truncated": "is not valid JSON",
    "a list": "has no 'variants'",
    "no variants": "has no 'variants'",
    "a variant that is not an entry": "variant 'baseline' is not an object",
    "ragged head scores": "malformed 'head_scores'",
    "not text": "is not text",
}


def assert_one_line_refusal(info, kind: str, path: Path) -> None:
    message = info.value.code
    assert isinstance(message, str) and "\n" not in message, message
    assert message.startswith("lit_massive: error: ") and str(path) in message and EXPECTED[kind] in message


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_rank_heads_refuses_a_spoiled_file_in_one_line(spoiled, kind, tmp_path):
    with mock.patch("sys.argv", ["lit_massive"]), pytest.raises(SystemExit) as info:
        cli_main(["rank-heads", str(spoiled[kind]), "--out", str(tmp_path / "out")])
    assert_one_line_refusal(info, kind, spoiled[kind])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_select_scores_refuses_a_spoiled_file_in_one_line(spoiled, kind, tmp_path):
    variants = {"s": {"select": "top", "k": 2, "scores": str(spoiled[kind])}}
    with pytest.raises(SystemExit) as info:
        run_validate(tmp_path, *SMALL, "--model.variants", json.dumps(variants))
    assert_one_line_refusal(info, kind, spoiled[kind])
    assert runs(tmp_path) == []


@pytest.mark.parametrize("kind", ["empty", "truncated", "no variants"])
def test_set_massive_from_refuses_a_spoiled_file_in_one_line(spoiled, kind, tmp_path):
    variants = {"m": {"set_massive": {"layer": 2, "to": "mean", "from": str(spoiled[kind])}}}
    with pytest.raises(SystemExit) as info:
        run_validate(tmp_path, *SMALL, "--model.variants", json.dumps(variants))
    assert_one_line_refusal(info, kind, spoiled[kind])


@pytest.mark.slow  # processes
@pytest.mark.parametrize("kind", ["empty", "truncated", "a list"])
def test_rank_heads_process_prints_one_line(spoiled, kind):
    done = subprocess.run(
        [sys.executable, "-m", "lit_massive", "rank-heads", str(spoiled[kind])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and EXPECTED[kind] in done.stderr, done.stderr
