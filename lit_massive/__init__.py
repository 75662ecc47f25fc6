"""lit_massive: measure massive activations and attention heads of decoder language models.

The flow: `cli` (LightningCLI) -> `data` (token windows) -> `module` (one forward pass per
variant under `probes`) -> `analyses` (one file each) -> `report` (results.json,
TensorBoard, figures, tables). `measure` runs the same pass from Python.

The names below are imported when first used (`lit_massive.measure`, `from lit_massive
import MassiveActivations`), not with the package: `python -m lit_massive configs`,
`rank-heads` and `--help` import the package and must not wait for torch and lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lit_massive.version import __version__  # noqa: F401  (lit_massive.__version__)

if TYPE_CHECKING:
    from lit_massive.analyses import ANALYSES, Analysis, register_analysis
    from lit_massive.api import measure
    from lit_massive.data import WindowsDataModule
    from lit_massive.errors import InputError
    from lit_massive.module import MassiveActivations
    from lit_massive.results.schema import RunResults, read_results

# name -> the module that defines it
_LAZY = {
    "ANALYSES": "lit_massive.analyses",
    "Analysis": "lit_massive.analyses",
    "register_analysis": "lit_massive.analyses",
    "measure": "lit_massive.api",
    "WindowsDataModule": "lit_massive.data",
    "InputError": "lit_massive.errors",
    "MassiveActivations": "lit_massive.module",
    "RunResults": "lit_massive.results.schema",
    "read_results": "lit_massive.results.schema",
}

__all__ = [
    "ANALYSES",
    "Analysis",
    "InputError",
    "MassiveActivations",
    "RunResults",
    "WindowsDataModule",
    "measure",
    "read_results",
    "register_analysis",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
