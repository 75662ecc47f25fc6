"""Long-context throughput and memory of lit_massive on a 7B-shaped model, on a GPU.

    python benchmarks/long_context.py --device cuda          # Llama-2-7B shape, bf16, 4k/16k/32k tokens
    python benchmarks/long_context.py --device cpu --precision 32-true --layers 2 --width 128 --heads 8 \\
        --intermediate 256 --vocab 1000 --seq-lens 256 1024   # the tiny check (2 CPU cores: about 20 s)

For each window length T, one validation pass of the project's module (`bench._validate`:
head scores and, unless `--no-internals`, the attention internals, perplexity on, batch 1,
`--windows` windows) is timed as the module times itself (tokens/s of the pass, loading
excluded) and compared with a bare backbone forward pass (embeddings + blocks + final norm,
no hooks: `bench.time_bare`, best of `--repeats`) on the same windows. The model is
Llama-shaped with random weights (no download): built once, directly on `--device` in the
run's dtype (random init of 7B in bf16 on a GPU takes seconds), saved once with safetensors
in that dtype to a temporary directory and loaded from there by every pass (the page cache
keeps the 13.5 GB after the save), since the module loads a checkpoint by path.

Memory is what the pass adds to what is held once the model is loaded, and the absolute
peak. On CUDA: `torch.cuda.max_memory_allocated()`, reset when the pass starts (Lightning has
moved the weights to the GPU by then), minus what was allocated at that moment; exact in
this process, so one pass per length gives both the time and the memory. (`bench._peak_child`
would read its baseline before the Trainer moves the weights to the GPU, so on a GPU its
"added" includes them, and it loads the model twice.) On a CPU: the resident set's
high-water mark over the pass in a fresh process (`bench._peak_child`), with glibc returning
freed memory at once, as bench.py's depth rows measure it. A length that runs out of GPU
memory is reported as such and recorded as null.

The statistics are computed in tiles of `--attention-tile` query rows, so a pass holds at
most one block's (1, H, tile, T) float32 scores: linear in T. The last line is machine-readable:

    RESULT {"tokens_per_s_T": ..., "bare_tokens_per_s_T": ..., "vs_bare_T": ..., "peak_gib_T": ...,
            "absolute_peak_gib_T": ..., ..., "memory_growth_T0_to_T1": ..., "wall_s": ...}

per length T: `vs_bare_T` is the pass's throughput over the bare forward's (higher is
better), `peak_gib_T` the memory the pass adds (GiB); `memory_growth_T0_to_T1` is that added
memory at the longest length over the shortest, divided by the length ratio (1: linear; at a
tiny shape fixed costs dominate the short length and push it below 1).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import multiprocessing
import os
import queue as queue_module
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python benchmarks/long_context.py` from anywhere

from bench import TRUE_DTYPES, _peak_child, _validate, run_module, scratch_folder, time_bare  # noqa: E402

from lit_massive.module import MassiveActivations  # noqa: E402

T0 = time.perf_counter()  # the script's start, imports done
# each pass builds a Trainer and loads the model: keep its info lines and progress bars out of the table (this
# module also runs in every spawned measuring process); warnings stay
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
hf_logging.disable_progress_bar()

GIB = 2**30
# what the module loads the weights as, per Lightning precision (the Trainer casts to it otherwise)
MODULE_DTYPES = {"bf16-true": "bfloat16", "16-true": "float16"}
# glibc hands freed blocks back at once, so the resident set is what is in use (bench.depth_memory)
CPU_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def build_and_save(args, model_dir: str) -> LlamaForCausalLM:
    """The random Llama-shaped model, created on `args.device` in the run's dtype, saved to
    `model_dir` (safetensors, that dtype)."""
    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.width, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads or args.heads,
        max_position_embeddings=max(32768, *args.seq_lens),
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM._from_config(config, dtype=TRUE_DTYPES.get(args.precision, torch.float32))
    model.eval().save_pretrained(model_dir)
    return model


@contextmanager
def cuda_pass_memory(record: dict):
    """Around `trainer.validate`: at the start of the validation pass (the weights on the GPU),
    note what is allocated and restart the peak; the caller reads the peak afterwards."""
    start = MassiveActivations.on_validation_start

    def measured(self) -> None:
        torch.cuda.synchronize()
        record["start"] = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start(self)

    MassiveActivations.on_validation_start = measured
    try:
        yield
    finally:
        MassiveActivations.on_validation_start = start


def cuda_row(model_dir: str, windows, args, kwargs) -> tuple[float, int, int]:
    """One pass in this process: (seconds as the module times them, peak added, absolute peak)."""
    record: dict = {}
    module = _validate(model_dir, windows, args, while_running=cuda_pass_memory(record), **kwargs)
    wall, peak = module.results.timing["wall_s"], torch.cuda.max_memory_allocated()
    return wall, peak - record["start"], peak


def cpu_peak(model_dir: str, windows, args, kwargs) -> tuple[int, int]:
    """(peak added, absolute peak) of one pass in a fresh process (`bench._peak_child`)."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    saved = dict(os.environ)
    os.environ.update(CPU_ENV)  # a spawned child starts with the parent's environment
    try:
        child = ctx.Process(target=_peak_child, args=(model_dir, windows, args, results, kwargs))
        child.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    while True:  # a child that dies (killed for memory) would leave a plain get() waiting forever
        try:
            peak, start = results.get(timeout=5)
            break
        except queue_module.Empty:
            if not child.is_alive():
                raise RuntimeError(f"the measuring process exited ({child.exitcode}) without a result") from None
    child.join()
    return peak - start, peak


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="bf16-true", help="Lightning precision (bf16-true: weights in bf16)")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--width", type=int, default=4096, help="hidden size")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: --heads)")
    parser.add_argument("--intermediate", type=int, default=11008, help="MLP intermediate size")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--windows", type=int, default=1, help="windows per length (batch size 1)")
    parser.add_argument("--repeats", type=int, default=2, help="bare forward: best of this many (the first warms up)")
    parser.add_argument("--attention-tile", type=int, default=512, help="query rows per tile of head statistics")
    parser.add_argument("--no-internals", action="store_true", help="head scores without the attention internals")
    args = parser.parse_args()
    args.batch_size = 1
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda: no GPU visible (torch.cuda.is_available() is False)")
    kwargs = {
        "head_scores": True,
        "head_internals": not args.no_internals,
        "perplexity": True,
        "attention_tile": args.attention_tile,
        "dtype": MODULE_DTYPES.get(args.precision, "float32"),
    }
    model_dir = tempfile.mkdtemp(prefix="long_context_")
    try:
        model = build_and_save(args, model_dir)
        n_params = sum(p.numel() for p in model.parameters())
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        setup_s = time.perf_counter() - T0
        gpu = f", {torch.cuda.get_device_name()}" if cuda else f", torch threads {torch.get_num_threads()}"
        print(
            f"model: Llama shape, {args.layers} layers, d={args.width}, {args.heads} heads "
            f"({args.kv_heads or args.heads} KV), MLP {args.intermediate}, vocab {args.vocab}, random weights: "
            f"{n_params / 1e9:.2f}B parameters, {weights / GIB:.2f} GiB; {args.precision}, {args.device}{gpu}; "
            f"{args.windows} window(s) per length, attention tile {args.attention_tile}, internals "
            f"{'off' if args.no_internals else 'on'}; built and saved in {setup_s:.1f} s",
            flush=True,
        )
        generator = torch.Generator().manual_seed(1)
        windows = {t: torch.randint(0, args.vocab, (args.windows, t), generator=generator) for t in args.seq_lens}
        bare, bare_added = {}, {}
        for t in args.seq_lens:  # with the built model, before any module copy is on the device
            try:
                if cuda:
                    torch.cuda.synchronize()
                    start = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                bare[t] = windows[t].numel() / time_bare(model.model, windows[t], args)
                if cuda:
                    bare_added[t] = torch.cuda.max_memory_allocated() - start
            except torch.OutOfMemoryError:
                print(f"T={t}: the bare forward ran out of GPU memory", flush=True)
                bare[t] = None
            free_memory()
        del model
        free_memory()

        rows = {}
        for t in args.seq_lens:
            begun = time.perf_counter()
            try:
                if cuda:
                    wall, added, peak = cuda_row(model_dir, windows[t], args, kwargs)
                else:
                    wall = run_module(model_dir, windows[t], args, **kwargs)
                    added, peak = cpu_peak(model_dir, windows[t], args, kwargs)
                rows[t] = {"tokens_per_s": windows[t].numel() / wall, "added": added, "peak": peak}
                print(
                    f"T={t}: {rows[t]['tokens_per_s']:.0f} tokens/s, +{added / GIB:.2f} GiB (peak {peak / GIB:.2f} "
                    f"GiB); {time.perf_counter() - begun:.1f} s with loading",
                    flush=True,
                )
            except torch.OutOfMemoryError:
                print(f"T={t}: out of GPU memory (torch.OutOfMemoryError); recorded as null", flush=True)
                rows[t] = None
            free_memory()
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)

    kind = "CUDA allocated" if cuda else "process RSS during the pass"
    header = ("tokens", "tokens/s", "bare tokens/s", "vs bare", "added GiB", "peak GiB", "bare added GiB")
    print(f"\nmemory: {kind}; added: over what is held once the model is loaded")
    print("{:>7s} {:>10s} {:>14s} {:>8s} {:>10s} {:>9s} {:>15s}".format(*header))
    result: dict[str, float | None] = {}

    def cell(x, width: int, digits: int) -> str:
        return "-".rjust(width) if x is None else f"{x:{width}.{digits}f}"

    for t in args.seq_lens:
        row, b = rows[t], bare[t]
        tps = row and row["tokens_per_s"]
        ratio = tps / b if tps and b else None
        added, peak = (row["added"] / GIB, row["peak"] / GIB) if row else (None, None)
        b_added = bare_added[t] / GIB if t in bare_added else None
        print(f"{t:7d} {cell(tps, 10, 0)} {cell(b, 14, 0)} {cell(ratio, 8, 3)} {cell(added, 10, 3)} "
              f"{cell(peak, 9, 3)} {cell(b_added, 15, 3)}")  # fmt: skip
        result |= {
            f"tokens_per_s_{t}": tps,
            f"bare_tokens_per_s_{t}": b,
            f"vs_bare_{t}": ratio,
            f"peak_gib_{t}": added,
            f"absolute_peak_gib_{t}": peak,
        }
    short, long = min(args.seq_lens), max(args.seq_lens)
    if short != long:
        a, b = result[f"peak_gib_{short}"], result[f"peak_gib_{long}"]
        result[f"memory_growth_{short}_to_{long}"] = b / a / (long / short) if a and b else None
    result["wall_s"] = time.perf_counter() - T0
    print(f"\nwhole script after its imports: {result['wall_s']:.1f} s (model built and saved in {setup_s:.1f} s)")
    print("RESULT " + json.dumps({k: None if v is None else round(v, 3) for k, v in result.items()}))


if __name__ == "__main__":
    with scratch_folder():
        main()
