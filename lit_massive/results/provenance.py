"""What a run ran on, for results.json's `provenance` block (as lm-eval-harness records it).

Two runs' `provenance` blocks say what changed between them: package versions, the model's
weights (hub commit, or a content hash of local weight files), the dataset's fingerprint,
the project's git commit, and the hardware. Nothing here names the host.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from lit_massive.models import toy
from lit_massive.models.loading import WEIGHT_SUFFIXES, ModelSource
from lit_massive.version import __version__

PACKAGES = ("lit_massive", "torch", "transformers", "lightning", "datasets", "torchmetrics", "jsonargparse", "gguf")
# A superset of what loading requires: the hash covers every weight file a checkpoint directory
# may carry (TF .h5/.ckpt, Flax .msgpack, GGUF too), so two directories that differ in any of them differ here
HASHED_SUFFIXES = WEIGHT_SUFFIXES + (".ckpt", ".h5", ".msgpack", ".gguf")
_CHUNK = 1 << 20


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        if package == "lit_massive":  # run from a checkout that was never installed
            return __version__
        return None


def _sha256_files(paths: list[Path], root: Path) -> str:
    """One digest over the files' names (relative to `root`) and contents, in name order."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _sha256_state_dict(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + b"\0" + str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _hub_revision(
    name: str,
    model: torch.nn.Module | None,
    cache_dir: str | Path | None = None,
    revision: str | None = None,
    filename: str = "config.json",
) -> str | None:
    """The commit a hub checkpoint was loaded from: the config's `_commit_hash` (older
    transformers), else the snapshot directory its cached `filename` (config.json, or the
    GGUF file) lies in, at `revision` (a branch, tag or commit; None: main)."""
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    if commit:
        return commit
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, filename, cache_dir=cache_dir, revision=revision)
    except Exception:  # an invalid repo id, an unreadable cache: no revision to report
        return None
    if isinstance(cached, str) and Path(cached).parent.parent.name == "snapshots":
        return Path(cached).parent.name
    return None


def _sha256_file(path: Path) -> str:
    """A file's plain sha256, as `sha256sum` prints it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_revision(source: ModelSource | str, model: torch.nn.Module | None = None) -> dict:
    """Which weights `source` resolved to.

    `source` is `toy` (sha256 over a freshly built toy model's state dict: it changes when
    toy.py's weights do), `local` (sha256 over the directory's weight files, names and
    contents; a GGUF file: that file's sha256, as `sha256sum` prints it) or `hub`
    (`revision`: the commit hash; `requested_revision`: the branch, tag or commit asked for).
    """
    if isinstance(source, str):
        source = ModelSource(source, source, local=Path(source).expanduser().is_dir())
    name_or_path = source.location
    if source.name == toy.TOY:
        return {"source": "toy", "revision": None, "weights_sha256": _sha256_state_dict(toy.build_toy_model())}
    if source.gguf_file is not None:
        path = source.gguf_path() if source.local else None
        commit = None if source.local else _hub_revision(name_or_path, None, None, source.revision, source.gguf_file)
        return {
            "source": "local" if source.local else "hub",
            "revision": commit,
            "requested_revision": source.revision,
            "weights_sha256": None if path is None else _sha256_file(path),
            "weights_files": [source.gguf_file],
        }
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        weights = [p for p in path.rglob("*") if p.is_file() and p.name.endswith(HASHED_SUFFIXES)]
        return {
            "source": "local",
            "revision": None,
            "weights_sha256": _sha256_files(weights, path) if weights else None,
            "weights_files": sorted(str(p.relative_to(path)) for p in weights),
        }
    return {
        "source": "hub",
        "revision": _hub_revision(name_or_path, model, revision=source.revision),
        "requested_revision": source.revision,
        "weights_sha256": None,
    }


def _git_commit() -> dict | None:
    """HEAD of the checkout this package runs from (None when installed, or no git)."""
    package = Path(__file__).resolve().parents[1]  # lit_massive/
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=package, capture_output=True, text=True, timeout=10
        )
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() / "lit_massive" != package:
            return None  # not a checkout of this project (an install inside some other repository)
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, capture_output=True, text=True, timeout=10)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=package,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def _hardware() -> dict:
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    return {
        "platform": platform.platform(),  # OS, kernel, architecture; no host name
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "gpus": gpus,
        "cuda": torch.version.cuda,
    }


def run_provenance(
    source: ModelSource | str, model: torch.nn.Module | None = None, data_fingerprint: str | None = None
) -> dict:
    """Everything two runs' results.json need to say what differed between them:
    `versions`, `model` (see `model_revision`), `data_fingerprint`, `git`, `date`, `hardware`."""
    name = source if isinstance(source, str) else source.name
    return {
        "versions": {package: _version(package) for package in PACKAGES},
        "model": {"name_or_path": name, **model_revision(source, model)},
        "data_fingerprint": data_fingerprint,
        "git": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hardware": _hardware(),
    }
