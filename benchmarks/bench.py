"""Throughput and memory of lit_massive against a bare forward pass and the paper-style loop.

    python benchmarks/bench.py                     # 2 CPU cores: about 3 minutes
    python benchmarks/bench.py --full --device cuda --precision bf16-mixed

All measurements use the same random windows, batch size and precision, in one run of
this script. The model is GPT-2-shaped with random weights (no download); the default
keeps GPT-2 small's width, heads and vocabulary but has 4 blocks and 16 windows of 256
tokens. Each timing is the best of `--repeats` runs. The profile needs no logits, so
"bare" and the paper loop run the same backbone forward (blocks + ln_f) that the profile
runs (the published loop also computes logits; it is timed too, for reference); the LM
forward (with logits) is the reference for "profile + perplexity". The last line is
machine-readable:

    RESULT {"profile_vs_bare": ..., "heads_vs_bare": ..., "variants_cost": ...,
            "profile_vs_paper_loop": ..., "memory_growth": ..., "host_syncs_per_step": ...,
            "ppl_memory_ratio": ...}

`*_vs_*` are throughput ratios (higher is better); `variants_cost` is the extra time of
one pruning variant divided by one bare forward pass (lower is better; 1.0 means a
variant costs one more forward pass); `memory_growth` is the peak memory of a profile run
over 4N windows divided by that over N windows, each measured in a fresh process;
`host_syncs_per_step` counts the ops of one validation step with every feature on that read
a device value back to the host (target 0; on CUDA the step also runs under
`torch.cuda.set_sync_debug_mode("error")`); `ppl_memory_ratio` is the peak memory of a
profile + perplexity run over a profile-only run for a 128k vocabulary (Llama 3's) at
2 x 1024 tokens, where whole (B, T, V) float32 logits alone would take 1 GiB.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext

import lightning as L
import torch
from torch.utils.data import DataLoader
from transformers import GPT2Config, GPT2LMHeadModel

from lit_massive.data import UnpaddedDistributedSampler, Windows, collate_windows
from lit_massive.host_reads import HostReads
from lit_massive.module import MassiveActivations

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


def _validate(model_dir: str, windows, args, while_running=None, **kwargs) -> MassiveActivations:
    """One validation pass of the project's module; `while_running` is entered around it only
    (after the model is loaded)."""
    module = MassiveActivations(model_dir, **kwargs)
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


def _peak_child(model_dir: str, windows, args, queue, kwargs) -> None:
    """Peak memory while the validation pass runs: CUDA memory allocated on a GPU; on a CPU
    the resident set, sampled every 2 ms (model loading happens before and is not counted)."""
    if args.device == "cuda":
        run_module(model_dir, windows, args, **kwargs)
        queue.put(torch.cuda.max_memory_allocated())
        return
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    @contextmanager
    def sampling():
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        yield
        done.set()
        sampler.join()

    _validate(model_dir, windows, args, while_running=sampling(), **kwargs)
    queue.put(peak[0])


def peak_memory(model_dir: str, windows, args, perplexity: bool = False) -> int:
    """Peak memory of one run (profile, with or without perplexity) in a fresh process, so
    earlier runs cannot inflate it."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    kwargs = {"perplexity": perplexity}
    child = ctx.Process(target=_peak_child, args=(model_dir, windows, args, queue, kwargs))
    child.start()
    peak = queue.get()
    child.join()
    return peak


def host_syncs_per_step(model_dir: str, windows, args) -> float:
    """Host reads per validation step, every feature on: profile, locator, head scores,
    perplexity, components, a pruned variant, zero and mean edits and the random control."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="GPT-2 small shape: 12 blocks, 1024-token windows")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--windows", type=int, default=None, help="N (default 16, 64 with --full)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
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
    variants = {f"v{i}": [[i % n_layer, i]] for i in range(4)}
    rows["profile + 4 variants"] = time_module(model_dir, small, args, perplexity=False, variants=variants)
    rows["paper loop"] = time_paper_loop(model.transformer, small, args)
    rows["paper loop on the LM (as published)"] = time_paper_loop(model, small, args)
    peak_n, peak_4n = peak_memory(model_dir, small, args), peak_memory(model_dir, windows, args)
    syncs = host_syncs_per_step(model_dir, small[: 2 * args.batch_size], args)
    ppl_ratio = ppl_memory_ratio(args)

    bare, bare_lm = rows["bare backbone (blocks + ln_f)"], rows["bare LM (with logits)"]
    print(f"\n{'measurement':30s} {'seconds':>8s} {'tokens/s':>9s} {'vs bare backbone':>17s} {'vs bare LM':>11s}")
    for name, seconds in rows.items():
        print(f"{name:30s} {seconds:8.3f} {tokens / seconds:9.0f} {bare / seconds:17.3f} {bare_lm / seconds:11.3f}")
    kind = "CUDA allocated" if args.device == "cuda" else "process RSS during validation"
    print(
        f"\npeak memory of a profile run ({kind}): {peak_n / 2**20:.0f} MiB at N={n}, "
        f"{peak_4n / 2**20:.0f} MiB at 4N={4 * n}"
    )
    result = {
        "profile_vs_bare": bare / rows["profile"],
        "heads_vs_bare": bare / rows["profile + heads"],
        "variants_cost": (rows["profile + 4 variants"] - rows["profile"]) / 4 / bare,
        "profile_vs_paper_loop": rows["paper loop"] / rows["profile"],
        "memory_growth": peak_4n / peak_n,
        "host_syncs_per_step": syncs,
        "ppl_memory_ratio": ppl_ratio,
    }
    print("RESULT " + json.dumps({k: round(v, 3) for k, v in result.items()}))


if __name__ == "__main__":
    main()
