"""Windows a Python caller already has (token ids, or text and a tokenizer), served like
`WindowsDataModule`'s: same `Windows` items, same sampler that never repeats one."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lit_massive.data.text import tokenize
from lit_massive.data.windows import (
    Windows,
    cut_windows,
    tokenizer_bos,
    window_loader,
)
from lit_massive.errors import InputError


def text_windows(
    tokenizer, text: str | list[str], seq_len: int, stride: int | None, num_sequences: int | None
) -> tuple[Tensor, int, int | None, tuple[list[int], list[int]] | None]:
    """(windows, stride, bos_token_id, counts) of `text` (rows joined with "\\n\\n", as the
    corpus is), with a BOS first exactly when the tokenizer adds one itself; counts: the
    windows' (scored bytes, scored words) (`window_text_counts`), for `GivenWindows(counts=...)`,
    None when the tokenizer gives no token offsets."""
    joined = text if isinstance(text, str) else "\n\n".join(text)
    bos = tokenizer_bos(tokenizer)
    stride = stride or seq_len - (bos is not None)
    windows, counts = cut_windows(tokenize(tokenizer, joined), seq_len, stride, num_sequences, bos)
    return windows, stride, bos, counts


class GivenWindows(L.LightningDataModule):
    """Token windows (N, T) given in memory; `tokenizer` (optional) decodes token ids in the results.
    `counts` (per window scored bytes and words, from `text_windows`) give bits per byte and
    byte and word perplexity; windows given without text have none (those keys are null)."""

    def __init__(self, windows: Tensor, tokenizer: Any = None, stride: int | None = None,
                 bos_token_id: int | None = None, batch_size: int = 1,
                 counts: tuple[list[int], list[int]] | None = None) -> None:  # fmt: skip
        super().__init__()
        if windows.dim() != 2 or windows.dtype != torch.long or windows.shape[0] == 0:
            raise InputError(
                f"windows: a (N, T) tensor of token ids (torch.long) with N >= 1, got {tuple(windows.shape)} "
                f"{windows.dtype}"
            )
        self.windows, self.tokenizer, self.bos_token_id = windows, tokenizer, bos_token_id
        self.stride, self.batch_size, self.counts = stride, batch_size, counts

    def val_dataloader(self) -> DataLoader:
        dataset = Windows(self.windows, self.stride, self.bos_token_id is not None, self.counts)
        return window_loader(dataset, self.trainer, self.batch_size)

    def describe(self) -> dict[str, Any]:
        """What was evaluated, for results.json."""
        return {
            "dataset": None,
            "given": "windows",
            "seq_len": int(self.windows.shape[1]),
            "stride": self.stride,
            "bos_token_id": self.bos_token_id,
            "uses_bos": self.bos_token_id is not None,
            "num_windows": int(self.windows.shape[0]),
            "batch_size": self.batch_size,
        }
