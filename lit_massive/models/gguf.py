"""GGUF files (llama.cpp, LM Studio, Ollama): checked and described before anything loads.

transformers reads a GGUF file with ``from_pretrained(folder, gguf_file=name)`` and, asked to
(`dequantize_config`), unpacks every tensor into a dense float model, so every probe and
weight edit works on it as on any checkpoint. What it cannot read (an architecture it has
no mapping for, a truncated file, missing packages) is found here from the file's header,
read with the `gguf` package, and said in one line.
"""

from __future__ import annotations

import collections
import importlib.util
from pathlib import Path
from typing import Any

from lit_massive.errors import InputError

SUFFIX = ".gguf"
EXTRA = 'pip install "lit_massive[gguf]"'  # the gguf and accelerate packages


def is_gguf(name: str | None) -> bool:
    return name is not None and name.lower().endswith(SUFFIX)


def check_packages() -> None:
    """transformers needs both to read a GGUF file: `gguf` parses it, `accelerate` loads it."""
    missing = [p for p in ("gguf", "accelerate") if importlib.util.find_spec(p) is None]
    if missing:
        raise InputError(f"a GGUF model needs the {' and '.join(missing)} package(s): {EXTRA}")


def readable_architectures() -> list[str]:
    """The GGUF architectures (the file's `general.architecture`) this transformers reads."""
    names: set[str] = set()
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        names |= set(GGUF_SUPPORTED_ARCHITECTURES)
    except ImportError:
        pass
    try:  # transformers 5.25: a second reader, for the architectures it can keep packed
        from transformers.integrations.gguf.utils import GGUF_ARCHS

        names |= set(GGUF_ARCHS)
    except ImportError:
        pass
    return sorted(names - {"general", "tokenizer"})


def _reader(path: Path, what: str):
    from gguf import GGUFReader

    try:
        return GGUFReader(path)
    except (ValueError, KeyError, IndexError, OSError) as err:
        size = path.stat().st_size
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(
            f"{what} {str(path)!r} is not a readable GGUF file ({size} bytes; {first}): truncated or "
            f"corrupt? download it again"
        ) from err


def _file_type(reader) -> str | None:
    """`general.file_type` as llama.cpp names it (`Q4_1`, `Q4_K_M`, `F32`), None when unsaid."""
    from gguf import LlamaFileType

    field = reader.fields.get("general.file_type")
    if field is None:
        return None
    value = int(field.contents())
    try:
        return LlamaFileType(value).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return str(value)


def describe(path: str | Path, what: str = "model_name_or_path") -> dict[str, Any]:
    """What a GGUF file holds, for results.json and for the checks before a run: its
    architecture, quantization file type and how many tensors of each GGUF type. Raises a
    one-line InputError for a file that cannot be read or an architecture transformers
    cannot load from GGUF."""
    check_packages()
    path = Path(path)
    reader = _reader(path, what)
    field = reader.fields.get("general.architecture")
    architecture = field.contents() if field is not None else None
    readable = readable_architectures()
    if architecture not in readable:
        raise InputError(
            f"{what} {str(path)!r}: GGUF architecture {architecture!r} cannot be read by transformers "
            f"from GGUF; readable: {', '.join(readable)}"
        )
    counts = collections.Counter(t.tensor_type.name for t in reader.tensors)
    return {
        "gguf_file": path.name,
        "gguf_architecture": architecture,
        "gguf_file_type": _file_type(reader),
        "gguf_tensor_types": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def dequantize_config() -> dict[str, Any]:
    """`from_pretrained` kwargs that unpack every weight into a dense tensor: transformers 5.25
    can keep weights packed behind its own linear modules and attention kernel (with the
    `kernels` package), which the probes and weight edits would not see."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantize
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}
