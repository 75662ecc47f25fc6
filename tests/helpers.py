"""Plain helpers the tests share: CLI runs (in-process and as processes), their argument
lists, and the reference computations written without project code.

The environment (HF_HUB_OFFLINE, ...) is set in conftest.py, which pytest imports before
any test module, so before this module imports transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from lit_massive.cli import cli_main
from lit_massive.models.toy import ToyConfig
from lit_massive.results.schema import read_results

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.yaml")  # the offline demo: toy model, bundled corpus

MASSIVE_VARIANTS = {  # edits of the block where the toy model plants its massive activation
    "zero": {"set_massive": {"layer": ToyConfig().massive_layer, "to": "zero"}},
    "control": {"set_random": {"layer": ToyConfig().massive_layer, "seed": 3}},
    "mean": {"set_massive": {"layer": ToyConfig().massive_layer, "to": "mean"}},
}


def run_validate(root: Path, *args: str) -> tuple[Path, dict]:
    """Run the CLI in-process under `root`; return the new run directory (the folder of the
    new results.json: `lightning_logs/<model>/version_N`, or where a config's logger puts it)
    and its results."""
    before = set(root.glob("**/results.json"))
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
    (results,) = set(root.glob("**/results.json")) - before
    return results.parent, read_results(results)


def cli_output(capsys, *argv: str) -> str:
    """What the CLI, run in-process with `argv`, prints before it exits cleanly (--help, --print_config)."""
    with mock.patch("sys.argv", ["lit_massive"]), pytest.raises(SystemExit) as info:
        cli_main(list(argv))
    assert info.value.code in (0, None)
    return capsys.readouterr().out


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
    if done.returncode != 0:  # say whether it got as far as writing its results (a failure at exit?)
        written = [str(p.relative_to(root)) for p in root.glob("lightning_logs/*/version_*/results.json")]
        pytest.fail(
            f"status {done.returncode}, results written: {written}\n--- stdout:\n{done.stdout[-2000:]}\n"
            f"--- stderr:\n{done.stderr[-3000:]}"
        )
    # another rank's abort at exit does not change the launching process's status
    assert "terminate called" not in done.stderr, done.stderr[-3000:]
    return only_results(root)


def only_results(root: Path) -> dict:
    """The results of the one run under `root` (a run made in another process)."""
    (run_dir,) = root.glob("lightning_logs/*/version_*")
    return read_results(run_dir / "results.json")


def _counts(n: int | None, batch_size: int | None) -> list[str]:
    """`--data.num_sequences` and `--data.batch_size`, each left to its default where None."""
    return [
        *(["--data.num_sequences", str(n)] if n is not None else []),
        *(["--data.batch_size", str(batch_size)] if batch_size is not None else []),
    ]


def toy_run_args(*extra: str, n: int | None = None, batch_size: int | None = None) -> list[str]:
    """CLI arguments for a run of the toy model on the bundled corpus in 128-token windows
    (what configs/massive.yaml names for an offline run), then `extra`."""
    return [
        "--model.model_name_or_path",
        "toy",
        "--data.dataset",
        "toy",
        "--data.seq_len",
        "128",
        *_counts(n, batch_size),
        *extra,
    ]


def tiny_run_args(
    model_dir: Path, jsonl: Path, seq_len: int, n: int | None = None, batch_size: int | None = None, *args: str
) -> list[str]:
    """CLI arguments for a run of a saved model (`tiny_gpt2_dir`, `family_dir`) on a local
    jsonl file, then `args`; `n` and `batch_size` None leave the data module's defaults."""
    return [
        "--model.model_name_or_path",
        str(model_dir),
        "--data.data_files",
        str(jsonl),
        "--data.seq_len",
        str(seq_len),
        *_counts(n, batch_size),
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


def tensorboard_events(run_dir: Path, variant: str | None = None):
    """The TensorBoard events of a run (`variant` None) or of one of its variants, each of
    which is a TensorBoard run of its own (RUN/variants/VARIANT), everything kept."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = run_dir if variant is None else run_dir / "variants" / variant
    guidance = {"images": 0, "tensors": 0, "scalars": 0}
    return EventAccumulator(str(path), size_guidance=guidance).Reload()
