"""Sharded runs (FSDP2: decoder layers split over the processes) give the numbers of one
process, hold a fraction of the parameters per rank, and run across nodes as documented."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import DEMO, assert_same_numbers, only_results, run_validate, run_validate_ddp, tiny_run_args
from lit_massive.models.families import decoder_layout
from lit_massive.models.loading import build_structure, load_causal_lm, load_config
from lit_massive.models.sharding import sharded_causal_lm
from lit_massive.models.toy import build_toy_model
from tiny_families import FAMILIES

PRUNED = (1, 2)


@pytest.fixture(scope="module")
def llama_args(family_dir, corpus_jsonl) -> list[str]:
    """A tiny Llama (BOS windows, GQA) with every probe on a sharded layer: block outputs,
    head scores, components, a pruned head, a set_massive edit, zeroed weights of a sharded
    layer's MLP output projection (named, and drawn at random), perplexity."""
    variants = {
        "cut": [list(PRUNED)],
        "zero": {"set_massive": {"layer": 1, "to": "zero"}},
        "weights": {"zero_weights": [[1, 7, 5], [2, 40, 90]]},
        "random_weights": {"zero_random_weights": {"layer": 0, "count": 30, "seed": 1}},
    }
    return tiny_run_args(
        family_dir("llama"), corpus_jsonl, 24, 5, 2,
        "--model.analyses.head_scores.enabled", "true",
        "--model.analyses.components.enabled", "true",
        "--model.variants", json.dumps(variants),
    )  # fmt: skip


@pytest.fixture(scope="module")
def llama_single(tmp_path_factory, llama_args) -> dict:
    return run_validate(tmp_path_factory.mktemp("llama_one"), *llama_args)[1]


def _same_run(many: dict, single: dict, world: int) -> None:
    assert (single["world_size"], many["world_size"]) == (1, world)
    assert many["variants"]["baseline"]["num_sequences"] == 5  # 3 + 2: none repeated or dropped
    assert_same_numbers(many["variants"], single["variants"])


@pytest.mark.slow  # a sharded run: two processes
def test_sharded_toy_equals_one_process_and_holds_half_the_layers(tmp_path, corpus_jsonl):
    args = [
        "--config", DEMO,
        "--data.data_files", str(corpus_jsonl),
        "--data.num_sequences", "5",
        "--data.batch_size", "2",
        "--model.analyses.head_scores.enabled", "true",
        "--model.variants", json.dumps({
            "pruned": [[5, 1], [2, 7]],
            "low": {"select": "bottom", "k": 2},  # needs a first pass, on the sharded model too
            "zeroed": {"set_massive": {"layer": 2, "to": "zero"}},
            "super": {"zero_weights": "super"},  # this run's candidates, from a sharded first pass
        }),
    ]  # fmt: skip
    _, single = run_validate(tmp_path / "one", *args)
    # streamed text, split over the processes, gives the windows of the whole file
    sharded = run_validate_ddp(tmp_path / "two", *args, "--data.streaming", "true", strategy="model_parallel")
    _same_run(sharded, single, 2)
    assert (
        single["variants"]["zeroed"]["layers"][2]["top"][0]
        < 0.01 * single["variants"]["baseline"]["layers"][2]["top"][0]
    )
    zeroed = sharded["variants"]["super"]
    assert zeroed["edit"]["weights"] and zeroed["first_massive_layer"] is None

    # parameter memory: every decoder layer halved (the toy's dims are even), the rest whole
    toy = build_toy_model()
    nbytes = lambda params: sum(p.numel() * p.element_size() for p in params)  # noqa: E731
    layers = nbytes(p for block in toy.transformer.h for p in block.parameters())
    full = nbytes(toy.parameters())
    parallel = sharded["parallel"]
    assert (parallel["strategy"], parallel["sharded"], parallel["parameter_bytes_full"]) == (
        "model_parallel",
        True,
        full,
    )
    assert parallel["parameter_bytes_per_rank"] == [full - layers // 2] * 2
    assert max(parallel["parameter_bytes_per_rank"]) <= 0.6 * full
    assert single["parallel"]["parameter_bytes_per_rank"] == [full]
    assert all(b > 0 for b in parallel["peak_host_bytes_per_rank"])


@pytest.mark.slow  # a sharded run: two processes
def test_sharded_llama_equals_one_process(tmp_path, llama_args, llama_single):
    sharded = run_validate_ddp(tmp_path, *llama_args, strategy="model_parallel")
    _same_run(sharded, llama_single, 2)
    assert sharded["parallel"]["sharded"] and sharded["variants"]["baseline"]["components"]
    zeroed = sharded["variants"]["weights"]
    assert [(w["layer"], w["row"], w["col"]) for w in zeroed["edit"]["weights"]] == [(1, 7, 5), (2, 40, 90)]
    assert zeroed["perplexity"] != sharded["variants"]["baseline"]["perplexity"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(root: Path, strategy: str, args: list[str]) -> dict:
    """The README's multi-node command: two `torchrun` launches, one process each, meeting at
    a rendezvous on 127.0.0.1; both write under the same directory, as on a shared filesystem."""
    port = _free_port()
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"lit-massive-{port}",
        "-m", "lit_massive", "validate", *args,
        "--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.accelerator", "cpu",
        "--trainer.strategy", strategy,
        "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    root.mkdir(parents=True)
    nodes = [subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-3000:]
        assert "terminate called" not in err, err[-3000:]  # a worker's abort at exit
    return only_results(root)


@pytest.mark.slow  # two torchrun launches
@pytest.mark.parametrize("strategy", ["ddp", "model_parallel"])
def test_two_nodes_by_torchrun_equal_one_process(tmp_path, llama_args, llama_single, strategy):
    results = _two_nodes(tmp_path / strategy, strategy, llama_args)
    _same_run(results, llama_single, 2)
    assert results["parallel"]["sharded"] == (strategy == "model_parallel")


def test_sharding_needs_two_processes_and_says_so(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run_validate(tmp_path, "--config", DEMO, "--trainer.strategy", "model_parallel")
    message = str(info.value.code)
    assert message.startswith("lit_massive: error: trainer.strategy=model_parallel with 1 process")
    assert "\n" not in message and not list(tmp_path.glob("lightning_logs/*"))


def test_other_sharding_strategies_are_refused_in_one_line(tmp_path):
    """FSDP1 (`fsdp`): Lightning refuses it on a CPU itself; the refusal is one line too."""
    with pytest.raises(SystemExit) as info:
        run_validate(tmp_path, "--config", DEMO, "--trainer.strategy", "fsdp", "--trainer.devices", "2")
    message = str(info.value.code)
    assert message.startswith("lit_massive: error: trainer: The strategy `fsdp`") and "\n" not in message
    assert not list(tmp_path.glob("lightning_logs/*"))


def test_sharding_refuses_weights_it_cannot_read_in_slices(tmp_path, family_dir, corpus_jsonl):
    """A checkpoint without safetensors (a torch pickle) cannot be read one tensor at a time."""
    source, model_dir = family_dir("llama"), tmp_path / "bin_only"
    model_dir.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (model_dir / name).write_bytes((source / name).read_bytes())
    from safetensors.torch import load_file

    torch.save(load_file(source / "model.safetensors"), model_dir / "pytorch_model.bin")
    with pytest.raises(SystemExit) as info:
        run_validate(tmp_path, *tiny_run_args(model_dir, corpus_jsonl, 24, None, None, "--trainer.strategy",
                                              "model_parallel", "--trainer.devices", "2"))  # fmt: skip
    message = str(info.value.code)
    assert "sharded loading reads safetensors" in message and "\n" not in message
    assert not list(tmp_path.glob("lightning_logs/*"))


@pytest.fixture
def one_process_group():
    """A world of one process (gloo), torn down after the test: enough to run FSDP2's loading
    path in-process, where no other test sees it."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("model_type", FAMILIES)
def test_layer_by_layer_loading_equals_from_pretrained(one_process_group, family_dir, model_type):
    """Every family's checkpoint read part by part through transformers' own conversions
    (GPT-NeoX's `embed_out`, Mixtral's per-expert weights fused) gives the model exactly."""
    model_dir = str(family_dir(model_type))
    whole = load_causal_lm(model_dir)
    structure = build_structure(load_config(model_dir), torch.float32)
    sharded = sharded_causal_lm(structure, model_dir, None, "float32", torch.device("cpu"))
    ids = torch.randint(0, whole.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # hidden states and LM-head outputs (before any softcapping)
        hidden = [m.base_model(input_ids=ids).last_hidden_state for m in (whole, sharded)]
        logits = [decoder_layout(m).lm_head(h) for m, h in zip((whole, sharded), hidden, strict=True)]
    assert torch.equal(hidden[1], hidden[0]) and torch.equal(logits[1], logits[0])
