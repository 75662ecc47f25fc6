"""The DataModule: token windows of WikiText-2 (or any hub dataset, local files, or the toy
corpus) for validation, with the sampler that never repeats a window."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import datasets
import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lit_massive.data.windows import UnpaddedDistributedSampler, Windows, collate_windows, make_windows, tokenizer_bos
from lit_massive.errors import InputError
from lit_massive.models import toy
from lit_massive.models.loading import check_local_or_hub, load_tokenizer
from lit_massive.models.sharding import is_sharded

_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def _tokenize(tokenizer, text: str) -> Tensor:
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def _texts(rows: Iterable[dict], source: str) -> Iterator[str]:
    for row in rows:
        if "text" not in row:
            raise InputError(f"{source}: rows have no 'text' column (columns: {sorted(row)})")
        yield row["text"]


class WindowsDataModule(L.LightningDataModule):
    """Fixed-length token windows of any text split (a hub dataset, local files or the toy
    corpus) for validation."""

    def __init__(
        self,
        dataset: str = "Salesforce/wikitext",
        config_name: str | None = "wikitext-2-raw-v1",
        split: str = "test",
        data_files: str | list[str] | None = None,
        seq_len: int = 1024,
        stride: int | None = None,
        num_sequences: int | None = 10,
        batch_size: int = 1,
        streaming: bool = False,
        tokenizer: str | None = None,
        num_workers: int = 0,
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
        super().__init__()
        self.save_hyperparameters()
        for name, value in (("seq_len", seq_len), ("stride", stride or 1), ("batch_size", batch_size)):
            if value < 1:
                raise InputError(f"{name}={value}: must be a positive integer")
        if stride is not None and stride > seq_len:
            raise InputError(
                f"stride={stride} is above seq_len={seq_len}: windows would skip the tokens between them; "
                f"use stride <= {seq_len} (null: windows tile the text)"
            )
        if bos not in (True, False, "auto"):
            raise InputError(f"bos={bos!r}; valid: auto, true, false")
        if bos is True and seq_len < 2:
            raise InputError(f"seq_len={seq_len}: a BOS window needs seq_len >= 2 (BOS + text)")
        if num_sequences is not None and num_sequences < 1:
            raise InputError(f"num_sequences={num_sequences}: must be >= 1, or null for all windows")
        if context_length is not None and seq_len > context_length:
            raise InputError(
                f"seq_len={seq_len} is above the model's context of {context_length} tokens; "
                f"use seq_len <= {context_length}"
            )
        self.stride: int | None = stride  # the default depends on BOS: set in setup()
        self.bos_token_id: int | None = None
        self.data_files = [data_files] if isinstance(data_files, str) else data_files
        if self.data_files is not None:
            if not self.data_files:
                raise InputError("data_files is an empty list; give at least one file, or null")
            for f in self.data_files:
                path = Path(f).expanduser()
                if not path.is_file():
                    raise InputError(f"data_files: {f!r} does not exist or is not a file")
                if path.stat().st_size == 0:
                    raise InputError(f"data_files: {f!r} is empty (no text); give a file with text rows")
        elif dataset != toy.TOY:
            check_local_or_hub(dataset, "dataset")
        self.tokenizer_name = tokenizer or model_name_or_path
        self.tokenizer = None
        self.windows: Tensor | None = None
        self.fingerprint: str | None = None  # the loaded split's datasets fingerprint (None when streaming)

    # -- where the text comes from -------------------------------------------------------
    def _source(self) -> tuple[str, dict]:
        """(description, load_dataset kwargs) for the configured text."""
        h = self.hparams
        files = self.data_files
        if files is None and h.dataset == toy.TOY:
            files = [str(toy.corpus_path())]
        if files is not None:
            files = [str(Path(f).expanduser()) for f in files]
            suffixes = {Path(f).suffix.lower() for f in files}
            builders = {_BUILDERS.get(s, "text") for s in suffixes}
            if len(builders) > 1:
                raise InputError(f"data_files mix formats {sorted(suffixes)}; give files of one format")
            return f"data_files {files}", {"path": builders.pop(), "data_files": files, "split": "train"}
        return f"dataset {h.dataset!r}", {"path": h.dataset, "name": h.config_name, "split": h.split}

    def _load(self, streaming: bool):
        what, kwargs = self._source()
        try:
            return what, datasets.load_dataset(**kwargs, streaming=streaming)
        except (ConnectionError, FileNotFoundError) as err:
            raise InputError(
                f"{what} could not be loaded ({type(err).__name__}: {str(err).splitlines()[0]}). "
                f"Offline? Point data.data_files at a local copy of the split (parquet, json(l) "
                f"or txt), or use data.dataset: toy; set HF_HUB_OFFLINE=1 to fail at once instead of retrying"
            ) from err
        except (ValueError, datasets.exceptions.DatasetGenerationError) as err:
            cause = err.__cause__ or err
            raise InputError(f"{what}: {type(cause).__name__}: {str(cause).splitlines()[0]}") from err

    def prepare_data(self) -> None:
        """Download once per node (nothing to do when streaming)."""
        if not self.hparams.streaming:
            self._load(streaming=False)

    # -- windows ----------------------------------------------------------------------------
    def _needed_tokens(self) -> int | None:
        n = self.hparams.num_sequences
        return None if n is None else (n - 1) * self.stride + self.hparams.seq_len - self.uses_bos

    def _token_ids(self) -> Tensor:
        what, ds = self._load(self.hparams.streaming)
        self.fingerprint = getattr(ds, "_fingerprint", None)
        columns = ds.column_names
        if columns is not None and "text" not in columns:
            raise InputError(f"{what} has no 'text' column (columns: {sorted(columns)})")
        if not self.hparams.streaming:
            ids = _tokenize(self.tokenizer, "\n\n".join(ds["text"]))
        else:
            ids = self._stream_token_ids(_texts(ds, what))
        if len(ids) == 0:
            raise InputError(f"{what} contains no text")
        return ids

    def _stream_token_ids(self, texts: Iterator[str]) -> Tensor:
        """Read rows only until the needed windows are covered.

        The joined prefix is re-tokenised as it grows; once it holds `seq_len` tokens beyond
        the last needed one, tokens that far from the cut are those of the full text, so
        the windows equal the map-style ones.
        """
        needed = self._needed_tokens()
        margin = self.hparams.seq_len
        parts: list[str] = []
        chars, next_check = 0, 4 * (needed + margin) if needed else math.inf
        for text in texts:
            parts.append(text)
            chars += len(text) + 2
            if chars >= next_check:
                ids = _tokenize(self.tokenizer, "\n\n".join(parts))
                if len(ids) >= needed + margin:
                    return ids[:needed]
                next_check = 2 * chars
        return _tokenize(self.tokenizer, "\n\n".join(parts))

    def setup(self, stage: str | None = None) -> None:
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
        self.windows = make_windows(self._token_ids(), h.seq_len, self.stride, h.num_sequences, self.bos_token_id)

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
        dataset = Windows(self.windows, self.stride, self.uses_bos)
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        self.check_processes(world)
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            sampler=UnpaddedDistributedSampler(dataset, num_replicas=world, rank=rank, lockstep=is_sharded(trainer)),
            num_workers=self.hparams.num_workers,
            collate_fn=collate_windows,
        )

    def check_processes(self, world: int) -> None:
        """Every process needs at least one window (after `setup`)."""
        if self.windows.shape[0] < world:
            raise InputError(
                f"{self.windows.shape[0]} windows for {world} processes; every process needs one: "
                f"use data.num_sequences >= {world} or fewer devices"
            )

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
