"""Run directories named after the model (`lightning_logs/<model-name>/version_N`), so that
TensorBoard pointed at lightning_logs/ shows each run under its model's name, with the same
tags in every run; a logger the config sets keeps its own name."""

from __future__ import annotations

import pytest
import yaml

from helpers import run_validate, tensorboard_events, tiny_run_args
from lit_massive.report.comparison import model_run_name


def _args(model_dir, corpus_jsonl, *extra: str) -> list[str]:
    return tiny_run_args(model_dir, corpus_jsonl, 32, 2, None, "--model.analyses.head_scores.enabled", "true", *extra)


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_runs_of_two_models_are_named_after_them_and_numbered_per_model(tmp_path, family_dir, corpus_jsonl, capsys):
    gpt2, llama = family_dir("gpt2"), family_dir("llama")
    first, _ = run_validate(tmp_path, *_args(gpt2, corpus_jsonl))
    out = capsys.readouterr().out
    other, results = run_validate(tmp_path, *_args(llama, corpus_jsonl))
    again, _ = run_validate(tmp_path, *_args(gpt2, corpus_jsonl))
    logs = tmp_path / "lightning_logs"
    assert first == logs / gpt2.name / "version_0"
    assert other == logs / llama.name / "version_0"  # numbered per model: its first run is version_0
    assert again == logs / gpt2.name / "version_1"
    assert results["model"]["name_or_path"] == str(llama)
    assert f"Run directory: {first}\n" in out
    assert f"tensorboard --logdir {logs} " in out  # every model's runs: TensorBoard overlays them
    # config.yaml keeps the logger unset, so a rerun of it is named by its model again
    assert yaml.safe_load((first / "config.yaml").read_text())["trainer"]["logger"] is None


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_the_same_tags_in_runs_of_different_models(tmp_path, family_dir, corpus_jsonl):
    """Selecting two runs in TensorBoard shows two curves per chart: no tag names the model."""
    tags = []
    for model_type in ("gpt2", "llama"):
        run_dir, _ = run_validate(tmp_path, *_args(family_dir(model_type), corpus_jsonl))
        found = [tensorboard_events(run_dir).Tags(), tensorboard_events(run_dir, "baseline").Tags()]
        tags.append([(set(f["scalars"]), set(f["images"]), set(f["tensors"])) for f in found])
    assert tags[0] == tags[1]
    scalars = tags[0][1][0]  # the baseline's own run
    assert {"profile/top1", "profile/median", "perplexity"} <= scalars


def test_a_logger_the_config_sets_keeps_its_name(tmp_path, family_dir, corpus_jsonl):
    config = tmp_path / "named.yaml"
    logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
              "init_args": {"save_dir": str(tmp_path / "logs"), "name": "my-experiment"}}  # fmt: skip
    config.write_text(yaml.safe_dump({"trainer": {"logger": logger}}))
    run_dir, _ = run_validate(tmp_path, "--config", str(config), *_args(family_dir("llama"), corpus_jsonl))
    assert run_dir == tmp_path / "logs" / "my-experiment" / "version_0"
    assert not (tmp_path / "lightning_logs").exists()


def test_no_logger_stays_no_logger(tmp_path, family_dir, corpus_jsonl):
    run_dir, _ = run_validate(tmp_path, "--trainer.logger", "false", *_args(family_dir("llama"), corpus_jsonl))
    assert run_dir == tmp_path  # Lightning's place without a logger: default_root_dir
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize(
    "given, expected",
    [
        ("gpt2", "gpt2"),
        ("toy", "toy"),
        ("meta-llama/Llama-2-7b-hf", "Llama-2-7b-hf"),
        ("EleutherAI/pythia-160m/", "pythia-160m"),
        ("org/odd name:v2", "odd_name_v2"),
    ],
)
def test_model_run_name_of_hub_ids(given, expected):
    assert model_run_name(given) == expected


def test_model_run_name_of_local_directories(tmp_path, monkeypatch):
    local = tmp_path / "checkpoints" / "my model"
    local.mkdir(parents=True)
    assert model_run_name(str(local)) == "my_model"
    assert model_run_name(str(local) + "/") == "my_model"
    monkeypatch.chdir(local)
    assert model_run_name(".") == "my_model"  # the directory's own name, not "."
    snapshot = tmp_path / "hub" / "models--meta-llama--Llama-2-7b-hf" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    assert model_run_name(str(snapshot)) == "Llama-2-7b-hf"  # a hub cache snapshot: its repository
    hidden = tmp_path / ".cache"
    hidden.mkdir()
    assert model_run_name(str(hidden)) == "cache"  # never a hidden folder
