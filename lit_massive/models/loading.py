"""Load models and tokenizers from a hub id, a local directory, or the built-in toy.

A wrong name fails here, before any work starts, with a message that says what would work.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from lit_massive.errors import InputError
from lit_massive.models import toy


def looks_like_path(name: str) -> bool:
    """A name meant as a local path: absolute, ./ or ../ relative, ~, or nested deeper than
    a hub id's `owner/name`."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name


def check_local_or_hub(name: str, what: str) -> str | None:
    """Return the local path for `name`, None for a hub id; raise if a path does not exist."""
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if looks_like_path(name):
        raise InputError(f"{what} {name!r}: local path does not exist")
    return None


def hub_error(name: str, what: str, err: Exception) -> InputError:
    return InputError(
        f"{what} {name!r} could not be loaded from the Hugging Face Hub ({type(err).__name__}: "
        f"{str(err).splitlines()[0]}). Offline? Save a copy once with internet "
        f"(`AutoModelForCausalLM.from_pretrained({name!r}).save_pretrained(DIR)` and the same "
        f"for AutoTokenizer) and set model_name_or_path: DIR, or use model_name_or_path: toy; set "
        f"HF_HUB_OFFLINE=1 to fail at once instead of retrying"
    )


def _local_error(name: str, what: str, err: Exception) -> InputError:
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return InputError(
        f"{what} {name!r}: cannot be loaded from this directory ({type(err).__name__}: {first}); "
        f"give a directory written by save_pretrained"
    )


def _from_pretrained(load, name: str, what: str, **kwargs):
    """`load(name or its local path, **kwargs)` with the failures a user can fix as one-line
    input errors: a wrong local path or directory, an unreachable hub."""
    local = check_local_or_hub(name, what)
    try:
        return load(local or name, **kwargs)
    except (OSError, ValueError) as err:
        if local is not None:
            raise _local_error(name, what, err) from err
        if isinstance(err, ValueError):  # not a download failure
            raise
        raise hub_error(name, what, err) from err


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise InputError(f"dtype {dtype!r} is not supported; valid: {', '.join(DTYPES)}")


# the weight files a local model directory must hold at its top level before it is loaded
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def load_config(name: str, attn_implementation: str | None = None, trust_remote_code: bool = False) -> PretrainedConfig:
    """The model's config alone: enough to check a run and build the model's structure."""
    if name == toy.TOY:
        return toy.toy_config(attn_implementation=attn_implementation)
    local = check_local_or_hub(name, "model_name_or_path")
    patterns = [f"*{suffix}" for suffix in WEIGHT_SUFFIXES]
    if local is not None and not any(next(Path(local).glob(p), None) for p in patterns):
        raise InputError(f"model_name_or_path {name!r}: no weights files ({', '.join(patterns)}) in this directory")
    kwargs = {"trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return _from_pretrained(AutoConfig.from_pretrained, name, "model_name_or_path", **kwargs)


def weights_dtype(dtype: str, config: PretrainedConfig) -> torch.dtype:
    """The dtype weights are created in; `auto` is the checkpoint's own (float32 if unsaid)."""
    check_dtype(dtype)
    if dtype != "auto":
        return DTYPES[dtype]
    saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return getattr(torch, saved) if isinstance(saved, str) else (saved or torch.float32)


def build_structure(config: PretrainedConfig, dtype: torch.dtype, trust_remote_code: bool = False) -> PreTrainedModel:
    """The model on the meta device: its modules and shapes, no storage, free at any size."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    return model.eval()


def load_causal_lm(
    name: str,
    attn_implementation: str | None = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load a causal LM in eval mode, its weights created directly in `dtype` (`auto`: the
    checkpoint's own), so a 7B model in bf16 never exists as a float32 copy. The attention
    backend stays the default unless `attn_implementation` is given."""
    check_dtype(dtype)
    if name == toy.TOY:
        model = toy.build_toy_model(attn_implementation=attn_implementation)
        if dtype != "auto":
            model = model.to(DTYPES[dtype])
    else:
        kwargs = {"dtype": DTYPES[dtype], "trust_remote_code": trust_remote_code}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        model = _from_pretrained(AutoModelForCausalLM.from_pretrained, name, "model_name_or_path", **kwargs)
    return model.eval()


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """The tokenizer for `name` (hub id, local directory, or the toy)."""
    if name == toy.TOY:
        return toy.build_toy_tokenizer()
    return _from_pretrained(AutoTokenizer.from_pretrained, name, "tokenizer", trust_remote_code=trust_remote_code)
