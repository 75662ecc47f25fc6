"""The DataModule: fixed-length token windows of WikiText-2 (or any hub dataset, local files,
or the toy corpus; see `data.text`) for validation, with the sampler that never repeats a window."""

from __future__ import annotations

from typing import Literal

import lightning as L
from torch import Tensor
from torch.utils.data import DataLoader

from lit_massive.data.text import TextSource
from lit_massive.data.windows import (
    Windows,
    check_processes,
    cut_windows,
    tokenizer_bos,
    window_loader,
)
from lit_massive.errors import InputError
from lit_massive.models import toy
from lit_massive.models.loading import load_tokenizer
from lit_massive.options import NonNegativeInt, PositiveInt, check_options


class WindowsDataModule(L.LightningDataModule):
    """Fixed-length token windows of one text (`TextSource`) for validation. Every option is
    checked on construction, so a bad one stops the run before any download or tokenisation."""

    def __init__(
        self,
        dataset: str = "Salesforce/wikitext",
        config_name: str | None = "wikitext-2-raw-v1",
        split: str = "test",
        data_files: str | list[str] | None = None,
        seq_len: PositiveInt = 1024,
        stride: PositiveInt | None = None,
        num_sequences: PositiveInt | None = 10,
        batch_size: PositiveInt = 1,
        streaming: bool = False,
        tokenizer: str | None = None,
        num_workers: NonNegativeInt = 0,
        bos: bool | Literal["auto"] = "auto",
        model_name_or_path: str = "gpt2",
        context_length: int | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        """
        Args:
            dataset: hub id, local dataset directory, or ``toy`` (the bundled corpus).
            config_name: dataset configuration (ignored for ``toy`` and ``data_files``).
            split: split to read (ignored for ``toy`` and ``data_files``).
            data_files: local parquet / json(l) / csv / txt file(s) with a ``text`` column
                (txt: one row per line); takes precedence over ``dataset``.
            seq_len: tokens per window.
            stride: text tokens between window starts; default ``seq_len`` (``seq_len - 1``
                with BOS), so windows tile the text.
            num_sequences: first N windows; null takes all.
            batch_size: windows per batch.
            streaming: stream the split instead of downloading it; same windows.
            tokenizer: tokenizer name or path; default: the model's.
            num_workers: DataLoader workers.
            bos: put the tokenizer's BOS token at position 0 of every window (then ``seq_len - 1``
                text tokens follow); ``auto``: exactly when the tokenizer adds one itself
                (Llama, Mistral, Gemma, OPT; not GPT-2, Pythia, Qwen).
            model_name_or_path: set from ``model.model_name_or_path`` by the CLI.
            context_length: the model's maximum positions, set by the CLI from the model.
            trust_remote_code: set from ``model.trust_remote_code`` by the CLI.
        """
        check_options(WindowsDataModule.__init__, locals())  # Python callers: LightningCLI checked already
        super().__init__()
        self.save_hyperparameters()
        if stride is not None and stride > seq_len:
            raise InputError(
                f"stride={stride} is above seq_len={seq_len}: windows would skip the tokens between them; "
                f"use stride <= {seq_len} (null: windows tile the text)"
            )
        if bos is True and seq_len < 2:
            raise InputError(f"seq_len={seq_len}: a BOS window needs seq_len >= 2 (BOS + text)")
        if context_length is not None and seq_len > context_length:
            raise InputError(
                f"seq_len={seq_len} is above the model's context of {context_length} tokens; "
                f"use seq_len <= {context_length}"
            )
        self.text = TextSource(dataset, config_name, split, data_files, streaming)
        self.data_files = self.text.data_files
        self.stride: int | None = stride  # the default depends on BOS: set in setup()
        self.bos_token_id: int | None = None
        self.tokenizer_name = tokenizer or model_name_or_path
        self.tokenizer = None
        self.windows: Tensor | None = None
        self.counts: tuple[list[int], list[int]] | None = None  # per window (scored bytes, scored words)
        self.fingerprint: str | None = None  # the loaded split's datasets fingerprint (None when streaming)

    def prepare_data(self) -> None:
        """Download once per node (nothing to do when streaming)."""
        if not self.hparams.streaming:
            self.text.load()

    def setup(self, stage: str | None = None) -> None:
        """Tokenise and cut the windows, once: the CLI calls this before Lightning does, so that
        errors only the data reveals come before the run directory exists."""
        if self.windows is not None:
            return
        h = self.hparams
        self.tokenizer = load_tokenizer(self.tokenizer_name, h.trust_remote_code)
        self.bos_token_id = self._bos_token_id()
        if self.hparams.stride is None:
            self.stride = h.seq_len - self.uses_bos
        if self.stride < 1:
            raise InputError(f"seq_len={h.seq_len}: a BOS window needs seq_len >= 2 (BOS + text)")
        if self.stride > h.seq_len - self.uses_bos:
            raise InputError(
                f"stride={self.stride} is above the {h.seq_len - 1} text tokens of a BOS window (seq_len="
                f"{h.seq_len}): windows would skip tokens; use stride <= {h.seq_len - 1}"
            )
        n = h.num_sequences  # streaming reads only the tokens of the first n windows
        needed = None if n is None else (n - 1) * self.stride + h.seq_len - self.uses_bos
        tokens = self.text.tokens(self.tokenizer, needed, margin=h.seq_len)
        self.fingerprint = self.text.fingerprint
        self.windows, self.counts = cut_windows(tokens, h.seq_len, self.stride, h.num_sequences, self.bos_token_id)

    @property
    def uses_bos(self) -> bool:
        return self.bos_token_id is not None

    def _bos_token_id(self) -> int | None:
        """The BOS decision of `data.bos` for this tokenizer."""
        bos = self.hparams.bos
        if bos == "auto":
            return tokenizer_bos(self.tokenizer)
        if bos and self.tokenizer.bos_token_id is None:
            raise InputError(f"bos=true but tokenizer {self.tokenizer_name!r} has no BOS token; use bos: false")
        return self.tokenizer.bos_token_id if bos else None

    def val_dataloader(self) -> DataLoader:
        dataset = Windows(self.windows, self.stride, self.uses_bos, self.counts)
        return window_loader(dataset, self.trainer, self.hparams.batch_size, self.hparams.num_workers)

    def check_processes(self, world: int) -> None:
        """Every process needs at least one window (after `setup`)."""
        check_processes(self.windows.shape[0], world)

    def describe(self) -> dict:
        """What was evaluated, for results.json."""
        h = self.hparams
        return {
            "dataset": None if self.data_files else h.dataset,
            "config_name": None if self.data_files or h.dataset == toy.TOY else h.config_name,
            "split": None if self.data_files or h.dataset == toy.TOY else h.split,
            "data_files": self.data_files,
            "streaming": h.streaming,
            "tokenizer": self.tokenizer_name,
            "seq_len": h.seq_len,
            "stride": self.stride,
            "bos": h.bos,
            "bos_token_id": self.bos_token_id,
            "uses_bos": self.uses_bos,
            "num_sequences": h.num_sequences,
            "num_windows": None if self.windows is None else int(self.windows.shape[0]),
            "batch_size": h.batch_size,
            "fingerprint": self.fingerprint,
        }
