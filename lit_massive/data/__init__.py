"""Token windows and the DataModule that serves them."""

from lit_massive.data.datamodule import WindowsDataModule
from lit_massive.data.windows import FILLER, UnpaddedDistributedSampler, Windows, collate_windows, make_windows

__all__ = ["FILLER", "UnpaddedDistributedSampler", "Windows", "WindowsDataModule", "collate_windows", "make_windows"]
