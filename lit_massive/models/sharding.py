"""Sharded evaluation: FSDP2 over the decoder layers, loaded without a full copy per process.

Each decoder layer is one `fully_shard` unit over all processes: a rank holds 1/W of every
layer's parameters and gathers one layer at a time during its forward pass, so probes see
ordinary unsharded modules. The embeddings, the final norm and the LM head stay replicated
(a few percent of a large model): the chunked NLL calls the LM head outside the decoder's
forward, and GPT-2-style tied embeddings need no special case.

Loading never builds the whole model on a rank. The model is created on the meta device,
sharded, then filled one decoder layer at a time: the checkpoint's tensors of layer i are
loaded by transformers into a one-layer copy of the model (so its key renames and tensor
conversions, e.g. Mixtral's fused experts, apply), and each rank keeps its slice.
"""

from __future__ import annotations

import copy
import json
import re
import resource
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, StrategyRegistry
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from transformers import PreTrainedModel
from transformers.utils import logging as hf_logging

from lit_massive.errors import InputError
from lit_massive.models import toy
from lit_massive.models.families import FAMILIES, DecoderLayout, decoder_layout
from lit_massive.models.loading import ModelSource, check_local_or_hub, hub_error, load_causal_lm, weights_dtype

SAFETENSORS_INDEX, SAFETENSORS = "model.safetensors.index.json", "model.safetensors"
SHARDED = "model_parallel"  # the `--trainer.strategy` name of sharded runs


def register_strategy() -> None:
    """Make `--trainer.strategy model_parallel` name Lightning's FSDP2 strategy (Lightning
    ships the class, `ModelParallelStrategy`, without a registry name)."""
    if SHARDED not in StrategyRegistry:
        StrategyRegistry.register(SHARDED, ModelParallelStrategy, description="FSDP2: decoder layers sharded")


def is_sharded(trainer) -> bool:
    return trainer is not None and isinstance(trainer.strategy, ModelParallelStrategy)


def strategy_name(strategy) -> str:
    """The `--trainer.strategy` name that selects `strategy`'s kind."""
    if isinstance(strategy, ModelParallelStrategy):
        return SHARDED
    if isinstance(strategy, DDPStrategy):
        return "ddp"
    return getattr(strategy, "strategy_name", None) or type(strategy).__name__


def _peak_memory(device: torch.device) -> tuple[int, int | None]:
    """Peak resident host memory of this process, and peak device memory on a GPU (bytes).
    The host figure is Linux's VmHWM, the high-water mark of this program alone; getrusage's
    maximum would also carry the launching process's size across fork and exec."""
    try:
        status = Path("/proc/self/status").read_text()
        host = int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) * 1024
    except (OSError, AttributeError):  # not Linux
        host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gpu = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return host, gpu


def parallel_record(trainer, model: nn.Module) -> dict:
    """How the run was spread over processes, with each rank's memory, for results.json (a
    collective: every rank calls it)."""
    full = sum(p.numel() * p.element_size() for p in model.parameters())  # a DTensor's numel is global
    device = trainer.strategy.root_device
    mine = (parameter_bytes(model), *_peak_memory(device))
    ranks = [mine]
    if dist.is_available() and dist.is_initialized():
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, mine)
    gpu = [r[2] for r in ranks]
    return {
        "strategy": strategy_name(trainer.strategy),
        # sharded: each decoder layer split over all processes; the rest replicated
        "sharded": is_sharded(trainer),
        "parameter_bytes_full": full,
        "parameter_bytes_per_rank": [r[0] for r in ranks],
        "peak_host_bytes_per_rank": [r[1] for r in ranks],
        "peak_gpu_bytes_per_rank": None if None in gpu else gpu,
    }


def world_mesh(device: torch.device) -> DeviceMesh:
    """A 1-D mesh over every process: all of them share the layers' parameters."""
    return init_device_mesh(device.type, (dist.get_world_size(),))


def shard_layers(layout: DecoderLayout, mesh: DeviceMesh) -> None:
    """One FSDP2 unit per decoder layer; everything else stays replicated."""
    for block in layout.blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)


def parameter_bytes(module: nn.Module) -> int:
    """Bytes of the parameters this process holds (its local shards of sharded ones)."""
    local = (p.to_local() if isinstance(p, DTensor) else p for p in module.parameters())
    return sum(t.numel() * t.element_size() for t in local)


def check_shardable(source: ModelSource) -> None:
    """Sharded loading reads each rank's slices out of safetensors files; a GGUF file holds
    blocks that transformers unpacks whole, so each rank would hold the whole model anyway."""
    if source.gguf_file is not None:
        raise InputError(
            f"trainer.strategy={SHARDED} with GGUF model {source.gguf_file!r}: a GGUF file is dequantized whole "
            f"in every process, so sharding would save no memory; use trainer.strategy ddp, or one process"
        )


def checkpoint_files(local_dir: str | None, name: str) -> list[str]:
    """The safetensors files of a local directory or a hub repository."""
    if local_dir is not None:
        root = Path(local_dir)
        index, single = root / SAFETENSORS_INDEX, root / SAFETENSORS
        if index.exists():
            return sorted({str(root / f) for f in json.loads(index.read_text())["weight_map"].values()})
        if single.exists():
            return [str(single)]
        raise InputError(
            f"model_name_or_path {name!r}: sharded loading reads safetensors weights and the directory has "
            f"none; save it with save_pretrained (safe_serialization is the default)"
        )
    from transformers.utils import cached_file

    try:
        index = cached_file(name, SAFETENSORS_INDEX, _raise_exceptions_for_missing_entries=False)
        if index is not None:
            files = sorted(set(json.loads(Path(index).read_text())["weight_map"].values()))
            return [cached_file(name, f) for f in files]
        single = cached_file(name, SAFETENSORS, _raise_exceptions_for_missing_entries=False)
    except OSError as err:
        raise hub_error(name, "model_name_or_path", err) from err
    if single is None:
        raise InputError(f"model_name_or_path {name!r}: no safetensors weights on the hub; sharded loading needs them")
    return [single]


def _layer_key(layers_path: str) -> re.Pattern:
    """Checkpoint keys of decoder layer i contain `<last part of the layers path>.<i>.`."""
    return re.compile(rf"(^|\.){re.escape(layers_path.split('.')[-1])}\.(\d+)\.")


def _checkpoint_groups(files: list[str], pattern: re.Pattern) -> dict[int | None, list[tuple[str, str]]]:
    """(file, key) of every checkpoint tensor, grouped by decoder layer (None: the rest)."""
    from safetensors import safe_open

    groups: dict[int | None, list[tuple[str, str]]] = {}
    for file in files:
        with safe_open(file, "pt") as f:
            for key in f.keys():
                match = pattern.search(key)
                groups.setdefault(int(match.group(2)) if match else None, []).append((file, key))
    return groups


def _read(entries: list[tuple[str, str]], pattern: re.Pattern) -> dict[str, torch.Tensor]:
    """The tensors of one group, layer keys renumbered to layer 0 (the one-layer copy's)."""
    from safetensors import safe_open

    out = {}
    for file in sorted({f for f, _ in entries}):
        with safe_open(file, "pt") as f:
            for fname, key in entries:
                if fname == file:
                    renumbered = pattern.sub(lambda m: m.group(0)[: -len(m.group(2)) - 1] + "0.", key, count=1)
                    out[renumbered] = f.get_tensor(key)
    return out


def _one_layer_config(config, layer: int | None):
    """The config of a small copy holding decoder layer `layer` as its layer 0, or (None) the
    non-layer parts, with one layer of each attention type so every rotary table exists."""
    cfg = copy.deepcopy(config)
    types = getattr(cfg, "layer_types", None)
    if isinstance(types, list):
        cfg.layer_types = list(dict.fromkeys(types)) if layer is None else [types[layer]]
    cfg.num_hidden_layers = len(cfg.layer_types) if isinstance(types, list) else 1
    return cfg


def _copy_into(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor], what: str) -> None:
    """Copy each source tensor into the same-named target; a sharded target keeps its slice."""
    missing = sorted(set(target) - set(source))
    if missing:
        raise RuntimeError(f"sharded loading of {what}: no values for {missing[:5]}")
    for name, dst in target.items():
        src = source[name].detach().to(device=dst.device, dtype=dst.dtype)
        if isinstance(dst, DTensor):  # this rank's slice only, no communication
            src = distribute_tensor(src, dst.device_mesh, dst.placements, src_data_rank=None)
        with torch.no_grad():
            dst.copy_(src)


def _tensors(module: nn.Module, skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    items = list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers(remove_duplicate=False))
    return {n: t for n, t in items if not n.startswith(skip)}


def load_sharded(
    model: PreTrainedModel,
    files: list[str],
    dtype: torch.dtype | None,
    device: torch.device,
) -> None:
    """Fill a meta-device model whose layers are sharded (`shard_layers`) from `files`,
    one decoder layer at a time: peak memory is this rank's shards plus one layer."""
    layout = decoder_layout(model)
    family = FAMILIES[model.config.model_type]
    pattern = _layer_key(family.layers)
    groups = _checkpoint_groups(files, pattern)
    model.to_empty(device=device)
    model.tie_weights()  # to_empty gives tied parameters separate storage
    for layer in [None, *range(layout.n_layer)]:
        state = _read(groups.get(layer, []), pattern)
        one, one_layout, layers = _load_part(type(model), model.config, layer, state, dtype)
        if layer is None:  # the parameters and buffers outside the decoder layers
            _copy_into(_tensors(model, skip=(layers,)), _tensors(one, skip=(layers,)), "the embeddings and head")
        else:
            _copy_into(_tensors(layout.blocks[layer]), _tensors(one_layout.blocks[0]), f"decoder layer {layer}")
        del one, one_layout, state


def _load_part(cls: type, config, layer: int | None, state: dict[str, torch.Tensor], dtype: torch.dtype | None):
    """A small copy of the model with one part loaded from `state` by transformers itself (its
    key renames and tensor conversions apply): decoder layer `layer` as its layer 0, or
    (None) everything outside the decoder layers. Refuses to fill that part at random.
    Returns the copy, its layout, and the name prefix of its decoder layers."""
    config = _one_layer_config(config, layer)
    if layer is not None:  # the copy's embeddings are never used: keep them one row long
        config.vocab_size, config.pad_token_id = 1, None
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the copy's unloaded parts are expected; checked below
    hf_logging.disable_progress_bar()
    try:
        one, info = cls.from_pretrained(None, config=config, state_dict=state, dtype=dtype, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    one_layout = decoder_layout(one.eval())
    layers = _prefix(one, one_layout.blocks[0]).rsplit(".", 1)[0] + "."
    in_part = (lambda k: k.startswith(layers + "0.")) if layer is not None else (lambda k: not k.startswith(layers))
    missing = sorted(k for k in info["missing_keys"] if in_part(k))
    if missing:
        what = "the embeddings and head" if layer is None else f"decoder layer {layer}"
        raise RuntimeError(f"sharded loading of {what}: the checkpoint has no values for {missing[:5]}")
    return one, one_layout, layers


def _prefix(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def sharded_causal_lm(
    structure: PreTrainedModel, name: str, attn_implementation: str | None, dtype: str, device: torch.device
) -> PreTrainedModel:
    """The model with its decoder layers sharded over all processes, each rank loading only
    its slices (`structure`: the model on the meta device, see `loading.build_structure`).
    The toy has no checkpoint: each rank builds it whole (it is small), then keeps its slices."""
    mesh = world_mesh(device)
    if name == toy.TOY:
        model = load_causal_lm(name, attn_implementation, dtype)
        shard_layers(decoder_layout(model), mesh)
        return model.to(device)
    local = check_local_or_hub(name, "model_name_or_path")
    shard_layers(decoder_layout(structure), mesh)
    load_sharded(structure, checkpoint_files(local, name), weights_dtype(dtype, structure.config), device)
    return structure
