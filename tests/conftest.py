"""Shared fixtures: everything offline, small, and written to temp dirs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

os.environ["HF_HUB_OFFLINE"] = "1"  # a hub id must fail fast, never try the network
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel  # noqa: E402

from lit_massive.cli import cli_main  # noqa: E402
from lit_massive.models.toy import ToyConfig, build_toy_tokenizer, corpus_path  # noqa: E402
from tiny_families import save_family  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.yaml")  # the offline demo: toy model, bundled corpus


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


def tiny_run_args(model_dir: Path, jsonl: Path, seq_len: int, n: int, batch_size: int, *args: str) -> list[str]:
    """CLI arguments for a run of a saved model (`tiny_gpt2_dir`) on a local jsonl file."""
    return [
        "--model.model_name_or_path",
        str(model_dir),
        "--data.data_files",
        str(jsonl),
        "--data.seq_len",
        str(seq_len),
        "--data.num_sequences",
        str(n),
        "--data.batch_size",
        str(batch_size),
        *args,
    ]


def read_texts(jsonl: Path) -> list[str]:
    """The `text` column of a jsonl file, without project code."""
    return [json.loads(line)["text"] for line in jsonl.read_text().splitlines()]


def reference_windows(model_dir: Path, jsonl: Path, seq_len: int, stride: int, n: int) -> torch.Tensor:
    """No project code: read rows, join, tokenise, slice (n, seq_len)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("\n\n".join(read_texts(jsonl)), add_special_tokens=False)["input_ids"]
    return torch.tensor([ids[s * stride : s * stride + seq_len] for s in range(n)])


def reference_block_outputs(model: torch.nn.Module, windows: torch.Tensor) -> list[torch.Tensor]:
    """Block outputs without project code: hidden_states for all but the last block, whose
    hidden state is after ln_f, so a plain hook on it."""
    last = []
    handle = model.transformer.h[-1].register_forward_hook(lambda m, a, o: last.append(o))
    with torch.no_grad():
        hidden = model(windows, output_hidden_states=True).hidden_states
    handle.remove()
    return [*hidden[1:-1], last[0] if torch.is_tensor(last[0]) else last[0][0]]


def reference_profile(
    blocks: list[torch.Tensor], ids: torch.Tensor, k: int = 3, thr: float = 100.0, ratio: float = 1000.0
) -> list[dict]:
    """The layer profile written another way: sort each sequence's |values| in float64; the
    lower median is element (n - 1) // 2. Per block: mean top-k and median, the share of
    sequences whose top-1 is massive, and per sequence the top-1's dim, position and token."""
    out = []
    for x in blocks:
        a = np.abs(x.double().numpy()).reshape(x.shape[0], -1)
        desc = -np.sort(-a, axis=1)
        median = np.sort(a, axis=1)[:, (a.shape[1] - 1) // 2]
        pos, dim = np.divmod(a.argmax(axis=1), x.shape[2])
        out.append(
            {
                "top": desc[:, :k].mean(0),
                "median": median.mean(),
                "massive_fraction": np.mean((desc[:, 0] > thr) & (desc[:, 0] > ratio * median)),
                "dims": dim,
                "positions": pos,
                "tokens": ids.numpy()[np.arange(len(pos)), pos],
            }
        )
    return out


MASSIVE_VARIANTS = {  # edits of the block where the toy model plants its massive activation
    "zero": {"set_massive": {"layer": ToyConfig().massive_layer, "to": "zero"}},
    "control": {"set_random": {"layer": ToyConfig().massive_layer, "seed": 3}},
    "mean": {"set_massive": {"layer": ToyConfig().massive_layer, "to": "mean"}},
}


@pytest.fixture(scope="session")
def massive_run(tmp_path_factory) -> tuple[Path, dict]:
    """configs/massive.yaml on the toy model with `MASSIVE_VARIANTS`: (run dir, results)."""
    return run_validate(
        tmp_path_factory.mktemp("massive"),
        "--config",
        str(REPO / "configs" / "massive.yaml"),
        "--model.model_name_or_path",
        "toy",
        "--data.dataset",
        "toy",
        "--data.seq_len",
        "128",
        "--data.num_sequences",
        "6",
        "--data.batch_size",
        "3",
        "--model.variants",
        json.dumps(MASSIVE_VARIANTS),
    )


def run_validate_ddp(root: Path, *args: str, devices: int = 2, strategy: str = "ddp") -> dict:
    """Run the CLI as `devices` processes on the CPU (a subprocess; `strategy` ddp, or
    model_parallel for sharded layers); return its results."""
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
            str(devices),
            "--trainer.strategy",
            strategy,
            "--trainer.enable_progress_bar",
            "false",
        ],
        cwd=root.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = root.glob("lightning_logs/*")
    return json.loads((run_dir / "results.json").read_text())


def assert_same_numbers(a, b, path: str = "") -> None:
    """Every number equal to 1e-6 relative, every other value equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_numbers(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_numbers(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-12), path
    else:
        assert a == b, path


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory):
    """`family_dir(model_type)`: the tiny planted checkpoint of that family (tiny_families), built once."""
    made = {}

    def get(model_type):
        if model_type not in made:
            made[model_type] = save_family(model_type, tmp_path_factory.mktemp(model_type))
        return made[model_type]

    return get
