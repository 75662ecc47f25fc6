"""Several named corpora in one run (`data.corpora`): each entry's text, cut into its own
windows with the run's shared window options (seq_len, stride, num_sequences, tokenizer, BOS).

A corpus's name is a level of results.json (`corpora.NAME`), of TensorBoard tags
(`NAME/VARIANT/...`) and of figure paths (`figures/NAME/`), so it is checked here, before
anything is loaded. The first corpus is the run's default: its results keep today's keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path

from torch import Tensor

from lit_massive.data.text import TextSource
from lit_massive.data.windows import cut_windows
from lit_massive.errors import InputError
from lit_massive.models import toy

# where the text comes from by default: WindowsDataModule's and a corpus entry's defaults alike
DATASET, CONFIG_NAME, SPLIT = "Salesforce/wikitext", "wikitext-2-raw-v1", "test"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # a TensorBoard tag part and a folder name on every OS
_NAME_RULE = "may hold only letters, digits, '_' and '-', and starts with a letter or digit (e.g. wikitext, c4, pg19)"


@dataclass
class Corpus:
    """One corpus of `data.corpora`: its name and where its text comes from, as the top-level
    ``data.*`` options say it for one corpus. A field left out takes the same default as the
    top-level option (``Salesforce/wikitext``, ``wikitext-2-raw-v1``, ``test``, no files, not
    streamed), not the top-level value: a hub dataset without configurations needs
    ``config_name: null``."""

    name: str
    dataset: str = DATASET
    config_name: str | None = CONFIG_NAME
    split: str = SPLIT
    data_files: str | list[str] | None = None
    streaming: bool = False


def check_corpora(corpora: list[Corpus]) -> None:
    """Names that can name a results.json level, a tag part and a folder, each once; at least one corpus."""
    if not corpora:
        raise InputError("data.corpora is an empty list; give at least one corpus (the first is the default), or null")
    seen: set[str] = set()
    for corpus in corpora:
        if not isinstance(corpus.name, str) or not _NAME.fullmatch(corpus.name):
            raise InputError(f"data.corpora: name {corpus.name!r} is not valid; a corpus name {_NAME_RULE}")
        if corpus.name in seen:
            raise InputError(f"data.corpora: name {corpus.name!r} is given twice; give each corpus its own name")
        seen.add(corpus.name)


def as_corpus(entry: Corpus | dict, i: int) -> Corpus:
    """A `data.corpora` entry as a `Corpus` (Python callers may give plain dicts)."""
    if isinstance(entry, Corpus):
        return entry
    try:
        return Corpus(**entry)
    except TypeError as err:
        keys = ", ".join(f.name for f in fields(Corpus))
        raise InputError(f"data.corpora[{i}]: {entry!r}: {err}; a corpus has {keys}") from err


def derived_name(dataset: str, data_files: str | list[str] | None) -> str:
    """The name of a run's one corpus when `data.corpora` is null: the first data file's stem,
    ``toy``, or the last part of the dataset's id or path (``Salesforce/wikitext`` -> ``wikitext``)."""
    files = [data_files] if isinstance(data_files, str) else data_files
    if files:
        name = Path(files[0]).stem
    else:
        name = toy.TOY if dataset == toy.TOY else Path(dataset.rstrip("/")).name
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_-") or "corpus"


class CorpusWindows:
    """One corpus's text (`TextSource`, checked at construction) and, after `cut`, its windows,
    their scored bytes and words, and the loaded split's fingerprint."""

    def __init__(self, corpus: Corpus) -> None:
        self.name = corpus.name
        self.text = TextSource(corpus.dataset, corpus.config_name, corpus.split, corpus.data_files, corpus.streaming)
        self.windows: Tensor | None = None
        self.counts: tuple[list[int], list[int]] | None = None  # per window (scored bytes, scored words)
        self.fingerprint: str | None = None  # None when streaming

    def cut(self, tokenizer, seq_len: int, stride: int, num_sequences: int | None, bos_token_id: int | None) -> None:
        """Tokenise the text and cut its windows; streaming reads only the tokens of the first `num_sequences`."""
        text_len = seq_len - (bos_token_id is not None)
        needed = None if num_sequences is None else (num_sequences - 1) * stride + text_len
        tokens = self.text.tokens(tokenizer, needed, margin=seq_len)
        self.fingerprint = self.text.fingerprint
        self.windows, self.counts = cut_windows(tokens, seq_len, stride, num_sequences, bos_token_id)
