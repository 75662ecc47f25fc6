"""Bundled configs by name from any directory, the `configs` subcommand, a wheel that
carries configs and corpus and runs the demo, and the provenance block of results.json."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from transformers import GPT2LMHeadModel

import lit_massive
from helpers import DEMO, REPO, run_validate, toy_run_args
from lit_massive.cli import cli_main
from lit_massive.cli import configs as bundled
from lit_massive.models import toy
from lit_massive.results.provenance import _hub_revision, run_provenance
from lit_massive.results.schema import read_results

NAMES = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))


def test_repository_configs_are_the_bundled_ones():
    assert (REPO / "configs").resolve() == (REPO / "lit_massive" / "configs").resolve()
    assert list(bundled.bundled_configs()) == NAMES
    assert {"demo", "prune_top", "baseline"} <= set(NAMES)


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_bundled_names_run_outside_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    few = ("--data.num_sequences", "4")  # the configs themselves run in full elsewhere
    _, demo = run_validate(tmp_path, "--config", "demo.yaml", *few)
    assert demo["model"]["name_or_path"] == "toy" and demo["data"]["num_windows"] == 4
    _, pruned = run_validate(tmp_path, "--config", "prune_top", *toy_run_args(*few))
    assert pruned["variants"]["prune_top"]["pruned_heads"] == [[2, 7], [5, 1], [6, 1]]


def test_an_existing_path_wins_over_a_bundled_name(tmp_path, monkeypatch):
    mine = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    mine["data"]["num_sequences"] = 2
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(mine))
    monkeypatch.chdir(tmp_path)
    _, results = run_validate(tmp_path, "--config", "demo.yaml", "--model.analyses.head_scores.enabled", "false")
    assert results["data"]["num_windows"] == 2
    absolute = str(tmp_path / "demo.yaml")
    assert bundled.resolve_config_args(["validate", "--config", absolute]) == ["validate", "--config", absolute]


def test_config_flag_forms_resolve(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = str(bundled.bundled_configs()["prune_top"])
    assert bundled.resolve_config_args(["validate", "-c", "prune_top"]) == ["validate", "-c", path]
    assert bundled.resolve_config_args(["validate", "--config=prune_top.yaml"]) == ["validate", f"--config={path}"]
    assert bundled.resolve_config("configs/prune_top.yaml") == path  # the README's spelling, from anywhere
    with pytest.raises(Exception, match="neither an existing file"):
        bundled.resolve_config("./prune_top.yaml")  # an explicit path that is not there is not a name


def test_unknown_config_name_fails_in_one_line_listing_the_bundled_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        run_validate(tmp_path, "--config", "prune_tpo.yaml")
    message = str(info.value.code)
    assert message.startswith("lit_massive: error: ") and "\n" not in message
    assert "'prune_tpo.yaml'" in message and all(name in message for name in NAMES)
    assert not (tmp_path / "lightning_logs").exists()


def test_configs_subcommand_lists_and_prints(capsys):
    cli_main(["configs"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == NAMES
    listing = dict(line.split(None, 1) for line in lines)
    assert "toy" in listing["demo"] and "GPT-2 small" in listing["prune_top"]
    cli_main(["configs", "prune_top"])
    assert capsys.readouterr().out == (REPO / "configs" / "prune_top.yaml").read_text()
    with pytest.raises(SystemExit) as info:
        cli_main(["configs", "nope"])
    assert "\n" not in str(info.value.code) and "demo" in str(info.value.code)


@pytest.mark.slow  # pip builds the wheel, then the demo runs from it in a process
def test_wheel_carries_configs_and_corpus_and_runs_the_demo_when_installed(tmp_path):
    source = tmp_path / "src"
    junk = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "lightning_logs", "__pycache__", ".*_cache")
    shutil.copytree(REPO, source, symlinks=True, ignore=junk)
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source)]
    subprocess.run([*build, "-w", str(wheels)], check=True, capture_output=True)
    (wheel,) = wheels.glob("lit_massive-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"lit_massive/configs/{name}.yaml" for name in NAMES} <= names
    assert "lit_massive/corpus/wiki.test.raw" in names
    # a non-editable install is the wheel unpacked on the path; run it from an empty directory
    site, work = tmp_path / "site", tmp_path / "work"
    zipfile.ZipFile(wheel).extractall(site)
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    args = ["validate", "--config", "demo.yaml", "--data.num_sequences", "2", "--trainer.enable_progress_bar", "false"]
    run = subprocess.run(
        [sys.executable, "-m", "lit_massive", *args], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    (results,) = work.glob("lightning_logs/*/version_*/results.json")
    provenance = read_results(results)["provenance"]
    assert provenance["model"]["source"] == "toy" and provenance["git"] is None  # installed, not a checkout


def _tiny_run(root: Path, model_dir: Path) -> dict:
    _, results = run_validate(
        root,
        "--config",
        DEMO,
        "--model.model_name_or_path",
        str(model_dir),
        "--model.analyses.feature_view",
        "null",
        "--data.seq_len",
        "32",
        "--data.num_sequences",
        "2",
    )
    return results["provenance"]


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_results_carry_provenance(tmp_path, tiny_gpt2_dir):
    first = _tiny_run(tmp_path, tiny_gpt2_dir)
    assert set(first) == {"versions", "model", "data_fingerprint", "git", "date", "hardware"}
    assert first["versions"]["lit_massive"] and first["versions"]["torch"] == torch.__version__
    assert all(first["versions"][p] for p in ("transformers", "lightning", "datasets", "torchmetrics"))
    assert first["model"]["source"] == "local" and first["model"]["weights_files"] == ["model.safetensors"]
    assert len(first["model"]["weights_sha256"]) == 64
    assert first["data_fingerprint"]
    if Path(lit_massive.__file__).resolve().parent == REPO.resolve() / "lit_massive":
        assert len(first["git"]["commit"]) == 40  # run from the checkout
    else:
        assert first["git"] is None  # an installed copy (scripts/check_min_deps.sh)
    assert first["hardware"]["cpu_count"] == os.cpu_count() and "gpus" in first["hardware"]

    second = _tiny_run(tmp_path, tiny_gpt2_dir)
    assert second["model"] == first["model"] and second["data_fingerprint"] == first["data_fingerprint"]

    changed = tmp_path / "changed"
    model = GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.bias[0] += 1.0
    model.save_pretrained(changed)
    toy.build_toy_tokenizer().save_pretrained(changed)
    assert _tiny_run(tmp_path, changed)["model"]["weights_sha256"] != first["model"]["weights_sha256"]


def test_toy_and_hub_revisions(tmp_path):
    first, second = run_provenance("toy")["model"], run_provenance("toy")["model"]
    assert first["source"] == "toy" and first == second and len(first["weights_sha256"]) == 64
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--owner--name"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    assert _hub_revision("owner/name", None, cache_dir=tmp_path) == commit
    assert _hub_revision("owner/other", None, cache_dir=tmp_path) is None
