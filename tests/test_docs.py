"""The documentation stays true: the README's demo table and the super-weights page's table
are what those commands print today, the README keeps its first screen, its links and its
Python example, and the reference pages that docs/hooks.py generates cover the code."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import math
import re
import shlex
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

from helpers import REPO, run_validate
from lit_massive.analyses import ANALYSES, registry
from lit_massive.cli.configs import bundled_configs
from lit_massive.data.datamodule import WindowsDataModule
from lit_massive.module import MassiveActivations
from lit_massive.results import schema
from lit_massive.variants import specs

README = REPO / "README.md"
DOCS = REPO / "docs"
SUPER_WEIGHTS_PAGE = DOCS / "analyses" / "super-weights.md"
FIRST_SCREEN = 60  # lines
PROGRESS = re.compile(r"^Validation\b")  # Lightning's progress line: its cells are timings


@functools.cache
def hooks():
    """docs/hooks.py, the MkDocs hook that writes the reference pages."""
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def marked_block(path: Path, name: str) -> list[str]:
    """The lines of the code block between `<!-- name -->` and `<!-- /name -->`."""
    text = path.read_text(encoding="utf-8")
    match = re.search(rf"<!-- {name} -->\s*```\n(.*?)```\s*<!-- /{name} -->", text, re.S)
    assert match, f"{path.name} has no <!-- {name} --> code block"
    return match.group(1).splitlines()


def documented_command(path: Path, config: str) -> list[str]:
    """The arguments after `python -m lit_massive` of a command line in `path` that validates
    `config` and nothing else (a comment may follow)."""
    line = rf"^python -m lit_massive (validate --config {re.escape(config)})[ \t]*(#.*)?$"
    match = re.search(line, path.read_text(encoding="utf-8"), re.M)
    assert match, f"{path.name} has no command line `python -m lit_massive validate --config {config}`"
    return shlex.split(match.group(1))


def cells(line: str) -> list[str]:
    """A table line's cells (the terminal table separates columns by two or more spaces)."""
    return re.split(r"\s{2,}", line.strip())


def printed_run(capsys, root: Path, argv: list[str]) -> tuple[str, dict]:
    """What the CLI prints for `argv` (run in-process under `root`), and the run's results.
    One torch thread: on 2 shared cores two threads contend (a 3x slower run); the printed
    numbers are the same."""
    assert argv[0] == "validate"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        capsys.readouterr()
        _, results = run_validate(root, *argv[1:])
    finally:
        torch.set_num_threads(threads)
    return capsys.readouterr().out, results


def assert_table_printed(shown: list[str], printed: str, root: Path) -> None:
    """Every line `shown` (from `variant` on), cell by cell, is what the run printed, with
    `$PWD` standing for the run's root."""
    printed_lines = [line for line in printed.splitlines() if line.strip() and not PROGRESS.match(line)]
    start = next(i for i, line in enumerate(printed_lines) if line.startswith("variant "))
    table = [line.replace("$PWD", str(root)) for line in shown if not PROGRESS.match(line)]
    assert len(table) >= 3 and table[0].startswith("variant "), table
    assert [cells(line) for line in printed_lines[start : start + len(table)]] == [cells(line) for line in table]


def test_the_readme_demo_table_is_what_the_demo_prints(capsys, tmp_path):
    shown = marked_block(README, "demo-table")
    printed, results = printed_run(capsys, tmp_path, documented_command(README, "demo.yaml"))
    assert_table_printed(shown, printed, tmp_path)
    # the progress line shows timings (not compared) after the number of batches, which is the run's
    (progress,) = [line for line in shown if PROGRESS.match(line)]
    batches = math.ceil(results["data"]["num_windows"] / results["data"]["batch_size"])
    assert f" {batches}/{batches} " in progress


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_the_super_weights_table_is_what_the_run_prints(capsys, tmp_path):
    shown = marked_block(SUPER_WEIGHTS_PAGE, "super-weights-table")
    printed, _ = printed_run(capsys, tmp_path, documented_command(SUPER_WEIGHTS_PAGE, "super_weights.yaml"))
    assert_table_printed(shown, printed, tmp_path)
    # the prose quotes the table: the peak before and after zeroing the super weight
    baseline, zeroed = (cells(line)[2].split()[0] for line in shown if line.startswith(("baseline ", "zero_super ")))
    assert f"falls from {baseline} to {zeroed}" in SUPER_WEIGHTS_PAGE.read_text(encoding="utf-8")


def test_the_readme_is_short_and_starts_with_setup_main_commands_and_tests():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 200
    first_screen = "\n".join(lines[:FIRST_SCREEN])
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    ci_commands = [line.replace(" --quiet", "") for line in ci if line.startswith(("pip install", "python -m"))]
    assert any(c.startswith("python -m pytest") for c in ci_commands)
    for command in [*ci_commands, "python3 -m venv .venv", 'python -m pytest -m "not slow" -q']:
        assert command in first_screen, f"{command!r} is not on the README's first {FIRST_SCREEN} lines"
    for command in ("validate --config demo.yaml", "fetch smollm2", "rank-heads", "compare", "tensorboard --logdir"):
        assert command in first_screen


def test_the_readme_links_point_at_pages_that_exist():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text(encoding="utf-8"))
    local = [link for link in links if "://" not in link]
    assert len(local) >= 15
    missing = [link for link in local if not (REPO / link).is_file()]
    assert not missing
    pages = {p.relative_to(REPO).as_posix() for p in DOCS.rglob("*.md")}
    assert pages <= set(local) | {"docs/index.md"}, "a docs page the README does not link"


def test_the_docs_python_example_is_the_readme_one():
    (readme,) = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    (docs,) = re.findall(r"```python\n(.*?)```", (DOCS / "python-api.md").read_text(encoding="utf-8"), re.S)
    assert docs == readme


def test_the_option_reference_has_every_model_and_data_option():
    page = hooks().options_reference()
    for prefix, cls in (("model", MassiveActivations), ("data", WindowsDataModule)):
        parameters = [p for name, p in inspect.signature(cls.__init__).parameters.items() if name != "self"]
        assert len(parameters) > 10
        for p in parameters:
            heading = f"### `{prefix}.{p.name}`"
            assert heading in page, heading
            section = page.split(heading, 1)[1].split("\n### ", 1)[0]
            if p.default is not inspect.Parameter.empty:
                assert f"default `{hooks().yaml_value(p.default)}`" in section
            assert "(not documented in the code)" not in section, f"{prefix}.{p.name} has no Args text"
    # a multi-line Args entry is read whole: model.variants ends with the quantize form
    variants = page.split("### `model.variants`", 1)[1].split("\n### ", 1)[0]
    assert "`quantize` (docs/variants.md)" in variants and "``" not in variants
    # every analysis's options, from its own file, each field with its Args text
    for group, cls in registry.option_groups().items():
        section = page.split(f"### model.analyses.{group}\n", 1)[1].split("\n### ", 1)[0]
        for field in dataclasses.fields(cls.Options):
            row = next(line for line in section.splitlines() if line.startswith(f"| `{field.name}` |"))
            assert row.split("|")[-2].strip(), f"{group}.{field.name} has no text: {row}"
    for form in typing.get_args(specs.VariantSpec):
        if isinstance(form, type) and typing.get_origin(form) is None:
            assert f"### {form.__name__}" in page
    for field in ("order", "k", "seed", "scores", "by", "text", "layers", "heads"):
        assert f"| `{field}` |" in page


def test_the_results_reference_has_every_schema_key_and_analysis():
    page = hooks().results_reference()
    typed = {name: obj for name, obj in vars(schema).items() if typing.is_typeddict(obj)}
    assert {"ResultsFile", "VariantEntry", "LayerRow"} <= set(typed)
    for name, cls in typed.items():
        section = page.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]
        for key in cls.__annotations__:
            assert f"| `{key}` |" in section, f"{name}.{key}"
    table = page.split("## Keys by analysis", 1)[1].split("\n### ", 1)[0]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| `")}
    assert len(rows) == len(ANALYSES)
    for name, cls in ANALYSES.items():
        row = rows[f"`{name}`"]
        assert all(f"`{key}`" in row for key in (*cls.keys, *cls.layer_keys)), row
        groups = [g for g in (cls.options_group(), *cls.requires) if g in registry.option_groups()]
        assert (f"`model.analyses.{groups[0]}`" if groups else "always on") in row
    # a comment in the source is a key's note; a lint directive is not
    assert "mean over windows of the k largest |block output|".replace("|", "\\|") in page
    assert "noqa" not in page + hooks().options_reference()


def test_the_configs_reference_has_every_bundled_config():
    page = hooks().configs_reference()
    for name, path in bundled_configs().items():
        assert f"## {name}\n" in page
        assert path.read_text(encoding="utf-8").strip() in page


@pytest.mark.slow
def test_the_site_builds_in_strict_mode(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WARNING" not in done.stderr
    options = (site / "reference" / "options" / "index.html").read_text(encoding="utf-8")
    assert "model.massive_threshold" in options and "data.num_sequences" in options
    assert (site / "reference" / "results-json" / "index.html").is_file()
    assert not (site / "hooks.py").exists()
