"""lit_massive: measure massive activations and attention heads of decoder language models.

The flow: `cli` (LightningCLI) -> `data` (token windows) -> `module` (one forward pass per
variant under `probes`) -> `analyses` (one file each) -> `report` (results.json,
TensorBoard, figures, tables). `measure` runs the same pass from Python.
"""

from lit_massive.analyses import ANALYSES, Analysis, register_analysis
from lit_massive.api import measure
from lit_massive.data import WindowsDataModule
from lit_massive.errors import InputError
from lit_massive.module import MassiveActivations
from lit_massive.report.schema import RunResults, read_results

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
__version__ = "0.1.0"
