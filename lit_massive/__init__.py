"""lit_massive: measure massive activations and attention heads of decoder language models."""

from lit_massive.data import WindowsDataModule
from lit_massive.errors import InputError
from lit_massive.module import MassiveActivations

__all__ = ["InputError", "MassiveActivations", "WindowsDataModule"]
__version__ = "0.1.0"
