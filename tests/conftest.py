"""Shared fixtures: everything offline, small, and written to temp dirs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

os.environ["HF_HUB_OFFLINE"] = "1"  # a hub id must fail fast, never try the network
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from lit_massive.cli import cli_main  # noqa: E402
from lit_massive.toy import build_toy_tokenizer, corpus_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A small random GPT-2 (3 blocks) with the toy tokenizer, saved like a hub checkpoint."""
    directory = tmp_path_factory.mktemp("tiny_gpt2")
    tokenizer = build_toy_tokenizer()
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=3, n_head=4)
    torch.manual_seed(1234)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def corpus_jsonl(tmp_path_factory) -> Path:
    """The bundled corpus as a jsonl file with one WikiText row (line + newline) per record."""
    path = tmp_path_factory.mktemp("data") / "wiki.test.jsonl"
    lines = corpus_path().read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines), encoding="utf-8")
    return path


def run_validate(root: Path, *args: str) -> tuple[Path, dict]:
    """Run the CLI in-process under `root`; return the new run directory and its results."""
    before = set(root.glob("lightning_logs/*"))
    with mock.patch("sys.argv", ["lit_massive"]):  # LightningCLI reads args only from `args`
        cli_main(
            [
                "validate",
                "--trainer.default_root_dir",
                str(root),
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.accelerator",
                "cpu",
                "--trainer.devices",
                "1",
                *args,
            ]
        )
    (run_dir,) = set(root.glob("lightning_logs/*")) - before
    return run_dir, json.loads((run_dir / "results.json").read_text())
