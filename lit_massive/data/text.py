"""Where the windows' text comes from (local data_files, the bundled toy corpus, or a hub or
local dataset), read whole or streamed, as one tensor of token ids (with the joined text and
the tokens' character offsets in it, where the tokenizer gives offsets)."""

from __future__ import annotations

import contextlib
import csv
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import datasets
import torch
from torch import Tensor

from lit_massive.errors import InputError
from lit_massive.models import toy
from lit_massive.models.loading import check_local_or_hub, no_network

_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


class Tokenized(NamedTuple):
    """Token ids of `text`; `offsets` (N, 2): each token's (start, end) characters in `text`,
    None for a tokenizer without offsets (a slow, Python one)."""

    ids: Tensor
    text: str
    offsets: Tensor | None

    def head(self, n: int) -> Tokenized:
        """The first n tokens (of the same text)."""
        return Tokenized(self.ids[:n], self.text, None if self.offsets is None else self.offsets[:n])


def tokenize(tokenizer, text: str) -> Tokenized:
    """`text` tokenised without special tokens, with character offsets where the tokenizer has them."""
    try:
        out = tokenizer(text, add_special_tokens=False, verbose=False, return_offsets_mapping=True)
    except NotImplementedError:  # slow tokenizers have no offsets
        out = tokenizer(text, add_special_tokens=False, verbose=False)
    ids = torch.tensor(out["input_ids"], dtype=torch.long)
    offsets = out.get("offset_mapping")
    offsets = None if offsets is None else torch.tensor(offsets, dtype=torch.long).reshape(-1, 2)
    return Tokenized(ids, text, offsets)


def _head_columns(path: Path) -> list[str] | None:
    """The columns of a table file, read from its head (a parquet schema, a CSV header, the
    keys of a JSON-lines file's first row), so a file without a text column is refused
    before `datasets` builds it and prints its progress; None where the head does not say
    (a JSON array, an unreadable file: `datasets` reports those)."""
    builder = _BUILDERS.get(path.suffix.lower())
    try:
        if builder == "parquet":
            import pyarrow.parquet as pq

            return pq.read_schema(path).names
        with open(path, encoding="utf-8-sig", newline="") as f:
            if builder == "csv":
                return next(csv.reader(f), None)
            if builder == "json":
                first = next((line for line in f if line.strip()), "")
                row = json.loads(first)
                return list(row) if isinstance(row, dict) else None
    except (OSError, UnicodeDecodeError, ValueError):  # pyarrow's ArrowInvalid and json's errors are ValueErrors
        return None
    return None  # a text file: one row per line, in the `text` column


def _check_text_column(name: str, path: Path) -> None:
    columns = _head_columns(path)
    if columns is not None and "text" not in columns:
        raise InputError(
            f"data_files: {name!r} has no 'text' column (columns: {sorted(columns)}); the windows are cut "
            f"from a column named text"
        )


def _texts(rows: Iterable[dict], source: str) -> Iterator[str]:
    for row in rows:
        if "text" not in row:
            raise InputError(f"{source}: rows have no 'text' column (columns: {sorted(row)})")
        yield row["text"]


@contextlib.contextmanager
def _offline(on: bool) -> Iterator[None]:
    """Offline mode for `datasets` while on (no network): a cached copy loads, nothing retries."""
    if not on:
        yield
        return
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


class TextSource:
    """The ``text`` column of ``data_files`` if given, else of the toy corpus (``dataset='toy'``),
    else of ``dataset``'s ``config_name`` / ``split``. Files and dataset are checked here, at
    construction, so a missing one stops the run before anything is downloaded or loaded."""

    def __init__(
        self, dataset: str, config_name: str | None, split: str, data_files: str | list[str] | None, streaming: bool
    ) -> None:
        self.dataset, self.config_name, self.split, self.streaming = dataset, config_name, split, streaming
        self.data_files = [data_files] if isinstance(data_files, str) else data_files
        self.fingerprint: str | None = None  # the loaded split's datasets fingerprint (None when streaming)
        if self.data_files is not None:
            if not self.data_files:
                raise InputError("data_files is an empty list; give at least one file, or null")
            for f in self.data_files:
                path = Path(f).expanduser()
                if not path.is_file():
                    raise InputError(f"data_files: {f!r} does not exist or is not a file")
                if path.stat().st_size == 0:
                    raise InputError(f"data_files: {f!r} is empty (no text); give a file with text rows")
                _check_text_column(f, path)
        elif dataset != toy.TOY:
            check_local_or_hub(dataset, "dataset")

    def _load_args(self) -> tuple[str, dict]:
        """(description, load_dataset kwargs); files load as the builder of their one format."""
        files = self.data_files
        if files is None and self.dataset == toy.TOY:
            files = [str(toy.corpus_path())]
        if files is not None:
            files = [str(Path(f).expanduser()) for f in files]
            suffixes = {Path(f).suffix.lower() for f in files}
            builders = {_BUILDERS.get(s, "text") for s in suffixes}
            if len(builders) > 1:
                raise InputError(f"data_files mix formats {sorted(suffixes)}; give files of one format")
            return f"data_files {files}", {"path": builders.pop(), "data_files": files, "split": "train"}
        return f"dataset {self.dataset!r}", {"path": self.dataset, "name": self.config_name, "split": self.split}

    def load(self) -> tuple[str, datasets.Dataset | datasets.IterableDataset]:
        """(description, split); load failures as one-line input errors (offline: what to do)."""
        what, kwargs = self._load_args()
        hub = (
            self.data_files is None and self.dataset != toy.TOY and check_local_or_hub(self.dataset, "dataset") is None
        )
        unreachable = no_network(datasets.config.HF_HUB_OFFLINE) if hub else None
        try:
            with _offline(unreachable is not None):
                return what, datasets.load_dataset(**kwargs, streaming=self.streaming)
        except (ConnectionError, FileNotFoundError) as err:
            cause = (
                f"{unreachable}, and no copy in the datasets cache"
                if unreachable
                else f"{type(err).__name__}: {str(err).splitlines()[0]}"
            )
            raise InputError(
                f"{what} could not be loaded ({cause}). Offline? Point data.data_files at a local copy "
                f"of the split (parquet, json(l) or txt), or use data.dataset: toy; set HF_HUB_OFFLINE=1 "
                f"to fail at once, without looking for the hub"
            ) from err
        except (ValueError, datasets.exceptions.DatasetGenerationError) as err:
            cause = err.__cause__ or err
            raise InputError(f"{what}: {type(cause).__name__}: {str(cause).splitlines()[0]}") from err

    def token_ids(self, tokenizer, needed: int | None, margin: int) -> Tensor:
        """The token ids of `tokens`."""
        return self.tokens(tokenizer, needed, margin).ids

    def tokens(self, tokenizer, needed: int | None, margin: int) -> Tokenized:
        """The rows joined with "\\n\\n", tokenised without special tokens. Streaming keeps
        the first `needed` tokens (all when None) and stops reading rows `margin` tokens past them."""
        what, ds = self.load()
        self.fingerprint = getattr(ds, "_fingerprint", None)
        columns = ds.column_names
        if columns is not None and "text" not in columns:
            raise InputError(f"{what} has no 'text' column (columns: {sorted(columns)})")
        if not self.streaming:
            tokens = tokenize(tokenizer, "\n\n".join(ds["text"]))
        else:
            tokens = _stream_tokens(tokenizer, _texts(ds, what), needed, margin)
        if len(tokens.ids) == 0:
            raise InputError(f"{what} contains no text")
        return tokens


def _stream_tokens(tokenizer, texts: Iterator[str], needed: int | None, margin: int) -> Tokenized:
    """Read rows only until the needed tokens are covered.

    The joined prefix is re-tokenised as it grows; once it holds `margin` (a window's
    length) tokens beyond the last needed one, tokens that far from the cut are those of
    the full text, so the windows equal the map-style ones.
    """
    parts: list[str] = []
    chars, next_check = 0, 4 * (needed + margin) if needed else math.inf
    for text in texts:
        parts.append(text)
        chars += len(text) + 2
        if chars >= next_check:
            tokens = tokenize(tokenizer, "\n\n".join(parts))
            if len(tokens.ids) >= needed + margin:
                return tokens.head(needed)  # the offsets of the first `needed` are those in the full text
            next_check = 2 * chars
    return tokenize(tokenizer, "\n\n".join(parts))
