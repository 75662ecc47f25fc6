"""lm-eval's own Hugging Face wrapper (`HFLM`) around the model the run loaded, no second copy
of its weights, with one variant of the plan active in every forward pass it makes; and the
evaluation of every variant on the tasks. Imported only when a run has `model.analyses.tasks` (it
imports lm-eval, an optional extra)."""

from __future__ import annotations

import copy
import math
import random
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lm_eval import __version__ as LM_EVAL_VERSION
from lm_eval import evaluator, simple_evaluate
from lm_eval.models.huggingface import HFLM
from torch import Tensor

from lit_massive.models.loading import load_tokenizer
from lit_massive.probes import Needs, probes
from lit_massive.results.schema import TasksRecord
from lit_massive.tasks.spec import Tasks, is_path, quiet_lm_eval, task_manager

# the run's precision -> the dtype lm-eval's wrapper autocasts to (its own autocast replaces the run's)
MIXED = {"bf16-mixed": "bfloat16", "16-mixed": "float16"}


def row_seeds(input_ids: Tensor) -> list[int]:
    """Per row, what stands in for the window index that seeds a variant's per-window draws
    (`set_random`): a CRC-32 of the row's token ids, so a row draws the same entries in any
    batch and on any process (lm-eval's sequences have no index in the run's windows)."""
    rows = input_ids.detach().to("cpu", torch.int64).numpy()
    return [zlib.crc32(row.tobytes()) for row in rows]


@contextmanager
def variant_active(module: Any, v: int, input_ids: Tensor) -> Iterator[None]:
    """Variant number `v` of the module's plan active on its model for one forward pass (or
    one generation) over `input_ids`: the probes of the validation pass (`variant_probes`:
    the same head masks, edits, zeroed weights and plan objects) recording nothing."""
    with probes(module.layout, Needs(), **module.variant_probes(v, row_seeds(input_ids))):
        yield


class VariantLM(HFLM):
    """`HFLM` around the run's loaded model, each forward pass and generation with variant
    number `variant` of the plan active. Under several processes, each evaluates its own
    share of every task's documents (lm-eval's split: document i on process i mod N) and
    lm-eval gathers the per-document scores to process 0, which aggregates them: the same
    numbers as one process."""

    def __init__(
        self, module: Any, tokenizer: Any, batch_size: int, mixed_precision_dtype: str | None, progress: bool
    ) -> None:
        with quiet_lm_eval():
            super().__init__(
                pretrained=module.model,
                tokenizer=tokenizer,
                batch_size=batch_size,
                mixed_precision_dtype=mixed_precision_dtype,
            )
        self.module, self.variant, self.progress = module, 0, progress
        if dist.is_available() and dist.is_initialized():
            self._rank, self._world_size = dist.get_rank(), dist.get_world_size()

    def _model_call(self, inps: Tensor, attn_mask: Tensor | None = None, labels: Tensor | None = None) -> Tensor:
        with variant_active(self.module, self.variant, inps):
            return super()._model_call(inps, attn_mask, labels)

    def _model_generate(self, context: Tensor, max_length: int, stop: list[str], **generation_kwargs: Any) -> Tensor:
        with variant_active(self.module, self.variant, context):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

    # its progress bars only where the run shows one
    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list:
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not self.progress)

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list:
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm or not self.progress)

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list:
        return super().generate_until(requests, disable_tqdm=disable_tqdm or not self.progress)

    # lm-eval's collectives (an Accelerator's in HFLM), on the run's own process group
    def all_gather(self, tensor: Tensor) -> Tensor:
        if self.world_size <= 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


@contextmanager
def kept_random_state(device: torch.device) -> Iterator[None]:
    """lm-eval seeds Python's, numpy's and torch's generators for each evaluation (its
    defaults, for its numbers' sake): the run's own states come back afterwards."""
    python, numpy = random.getstate(), np.random.get_state()
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


@contextmanager
def without_run_info() -> Iterator[None]:
    """`simple_evaluate` without the run information it adds to its results, which this run
    does not keep (results.json has its own provenance): the git commit of the working
    directory (its `git describe` prints "fatal: not a git repository" outside one, once per
    variant) and torch's environment report (subprocesses, about a second per variant)."""
    saved = {name: getattr(evaluator, name, None) for name in ("get_git_commit_hash", "add_env_info")}
    if saved["get_git_commit_hash"] is not None:
        evaluator.get_git_commit_hash = lambda: None
    if saved["add_env_info"] is not None:
        evaluator.add_env_info = lambda storage: None
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is not None:
                setattr(evaluator, name, value)


def _number(value: Any) -> float | None:
    """A metric as results.json holds it: a float, or null for lm-eval's "N/A" and NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def scores(reported: dict[str, Any]) -> dict[str, float | None]:
    """One task's block of lm-eval's `results` as `{metric: value, metric_stderr: value}`:
    its `metric,filter` keys, the filter dropped where it is lm-eval's default (`none`)."""
    out = {}
    for key, value in reported.items():
        metric, sep, kept = key.partition(",")
        if sep:  # not `alias`, `name` or `sample_len`
            out[metric if kept == "none" else key] = _number(value)
    return out


def run_record(tasks: Tasks, reported: dict[str, Any], world_size: int, wall: float) -> TasksRecord:
    """results.json's top-level `tasks`: what was evaluated and with what."""
    n_samples, configs = reported.get("n-samples", {}), reported.get("configs", {})
    return {
        "lm_eval_version": LM_EVAL_VERSION,
        "names": list(tasks.names),
        "limit": tasks.limit,
        "batch_size": tasks.batch_size,
        "num_fewshot": tasks.num_fewshot,
        "bootstrap_iters": tasks.bootstrap_iters,
        "processes": world_size,  # each evaluated its share of the documents
        "wall_s": wall,
        "tasks": {
            name: {
                "version": _version(reported.get("versions", {}).get(name)),
                "documents": n_samples.get(name, {}).get("effective"),
                "documents_in_task": n_samples.get(name, {}).get("original"),
                "output_type": configs.get(name, {}).get("output_type"),
                "num_fewshot": reported.get("n-shot", {}).get(name),
                "higher_is_better": reported.get("higher_is_better", {}).get(name),
            }
            for name in reported.get("results", {})
            if name in n_samples  # groups have none: their subtasks are listed
        },
        "groups": {name: list(subtasks) for name, subtasks in reported.get("group_subtasks", {}).items() if subtasks},
    }


def _version(value: Any) -> float | str | None:
    return value if value is None or isinstance(value, (int, float, str)) else str(value)


def _tokenizer(module: Any) -> Any:
    """The run's tokenizer (the data module's: the model's own unless `data.tokenizer` says
    otherwise), copied: lm-eval sets a pad token on the one it is given."""
    tokenizer = getattr(getattr(module.trainer, "datamodule", None), "tokenizer", None)
    if tokenizer is None:  # windows given as token ids: the model's own
        h = module.hparams
        tokenizer = load_tokenizer(h.model_name_or_path, h.trust_remote_code, h.gguf_file, h.revision)
    return copy.deepcopy(tokenizer)


def _broadcast(value: Any) -> Any:
    """Process 0's `value` on every process (lm-eval returns its results on process 0 only)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def evaluate(module: Any, tasks: Tasks) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every variant of the module's plan, baseline first, through lm-eval's `simple_evaluate`
    on `tasks`: per variant its `{task: {metric: value, metric_stderr: value}}`, and the run's
    record (`run_record`). A collective under several processes: every rank calls it."""
    plan, start = module.plan, time.perf_counter()
    mixed, progress = MIXED.get(str(module.trainer.precision)), module.trainer.progress_bar_callback is not None
    lm = VariantLM(module, _tokenizer(module), tasks.batch_size, mixed, progress)
    specs = [str(name) for name in tasks.names]
    manager = task_manager(not all(is_path(name) for name in specs))
    counted = plan.counts
    plan.count_into(plan.new_counts())  # what the edits change in lm-eval's sequences is not the pass's count
    by_variant, reported = {}, {}
    try:
        with quiet_lm_eval(), without_run_info(), kept_random_state(module.device), torch.no_grad():
            for v, name in enumerate(plan.names):
                lm.variant = v
                reported = simple_evaluate(
                    model=lm,
                    tasks=specs,
                    num_fewshot=tasks.num_fewshot,
                    batch_size=tasks.batch_size,
                    limit=tasks.limit,
                    bootstrap_iters=tasks.bootstrap_iters,
                    log_samples=False,
                    task_manager=manager,
                )
                if reported is not None:  # process 0
                    by_variant[name] = {task: scores(block) for task, block in reported["results"].items()}
    finally:
        plan.count_into(counted)
    record = run_record(tasks, reported or {}, lm.world_size, time.perf_counter() - start) if lm.rank == 0 else None
    return _broadcast((by_variant, record))
