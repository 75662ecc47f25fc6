"""The DataModule: fixed-length token windows of WikiText-2 (or any hub dataset, local files,
or the toy corpus; see `data.text`), or of several named corpora (`data.corpora`), for
validation, with the sampler that never repeats a window."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any, Literal

import lightning as L
from torch.utils.data import DataLoader

from lit_massive.data.corpora import (
    CONFIG_NAME,
    DATASET,
    SPLIT,
    Corpus,
    CorpusWindows,
    as_corpus,
    check_corpora,
    derived_name,
)
from lit_massive.data.text import TextSource
from lit_massive.data.windows import Windows, check_processes, tokenizer_bos, window_loader
from lit_massive.errors import InputError
from lit_massive.models import toy
from lit_massive.models.loading import load_tokenizer
from lit_massive.options import NonNegativeInt, PositiveInt, check_options

# the options a `data.corpora` entry gives per corpus, instead of the top-level ones
PER_CORPUS = ("dataset", "config_name", "split", "data_files", "streaming")


class WindowsDataModule(L.LightningDataModule):
    """Fixed-length token windows of one text (`TextSource`), or of each corpus of `corpora`
    (one validation loader each), for validation. Every option is checked on construction,
    so a bad one stops the run before any download or tokenisation."""

    def __init__(
        self,
        dataset: str = DATASET,
        config_name: str | None = CONFIG_NAME,
        split: str = SPLIT,
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
        corpora: list[Corpus] | None = None,
        gguf_file: str | None = None,
        revision: str | None = None,
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
            corpora: several named corpora, each measured with every variant: a list of
                ``{name, dataset, config_name, split, data_files, streaming}`` (a field left
                out takes the default of the top-level option of that name); the first is the
                default corpus (results.json's ``variants``). The window options above are
                shared. Null: one corpus, from the top-level options.
            gguf_file: set from ``model.gguf_file`` by the CLI (the model's tokenizer is the file's).
            revision: set from ``model.revision`` by the CLI (the tokenizer at the model's revision).
        """
        check_options(WindowsDataModule.__init__, locals())  # Python callers: LightningCLI checked already
        super().__init__()
        self.save_hyperparameters()
        check_window_options(seq_len, stride, bos, context_length)
        self.sources: list[CorpusWindows] = corpus_sources(locals())  # the default corpus first
        self.stride: int | None = stride  # the default depends on BOS: set in setup()
        self.bos_token_id: int | None = None
        self.tokenizer_name = tokenizer or model_name_or_path
        self.tokenizer = None

    # the default corpus's text and windows, as with one corpus
    text = property(lambda self: self.sources[0].text)
    data_files = property(lambda self: self.sources[0].text.data_files)
    windows = property(lambda self: self.sources[0].windows)
    counts = property(lambda self: self.sources[0].counts)  # per window (scored bytes, scored words)
    fingerprint = property(lambda self: self.sources[0].fingerprint)  # None when streaming

    @property
    def corpus_names(self) -> list[str]:
        """Every corpus's name, the default first; one per validation loader."""
        return [source.name for source in self.sources]

    def largest_token_id(self) -> int:
        """The largest token id in any corpus's windows (after `setup`), to check against the
        model's vocabulary before the run."""
        return max(int(source.windows.max()) for source in self.sources)

    def prepare_data(self) -> None:
        """Download once per node (nothing to do when streaming)."""
        for source in self.sources:
            if not source.text.streaming:
                source.text.load()

    def setup(self, stage: str | None = None) -> None:
        """Tokenise and cut the windows, once: the CLI calls this before Lightning does, so that
        errors only the data reveals come before the run directory exists."""
        if self.windows is not None:
            return
        h = self.hparams
        own = h.tokenizer is None  # the model's own tokenizer: from its GGUF file, at its revision
        self.tokenizer = load_tokenizer(
            self.tokenizer_name, h.trust_remote_code, h.gguf_file if own else None, h.revision if own else None
        )
        self.bos_token_id = chosen_bos(self.tokenizer, h.bos, self.tokenizer_name)
        if self.hparams.stride is None:
            self.stride = h.seq_len - self.uses_bos
        check_stride(self.stride, h.seq_len, self.uses_bos)
        for source in self.sources:
            with self._naming(source.name):
                source.cut(self.tokenizer, h.seq_len, self.stride, h.num_sequences, self.bos_token_id)

    @property
    def uses_bos(self) -> bool:
        return self.bos_token_id is not None

    def _naming(self, corpus: str) -> contextlib.AbstractContextManager[None]:
        """Input errors of a `data.corpora` entry say which corpus."""
        return corpus_errors(corpus, named=self.hparams.corpora is not None)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """One loader per corpus (Lightning's `dataloader_idx` is the corpus's index); one corpus: its loader."""
        loaders = []
        for source in self.sources:
            dataset = Windows(source.windows, self.stride, self.uses_bos, source.counts)
            with self._naming(source.name):
                loaders.append(window_loader(dataset, self.trainer, self.hparams.batch_size, self.hparams.num_workers))
        return loaders if len(loaders) > 1 else loaders[0]

    def check_processes(self, world: int) -> None:
        """Every process needs at least one window of every corpus (after `setup`)."""
        for source in self.sources:
            with self._naming(source.name):
                check_processes(source.windows.shape[0], world)

    def describe(self, corpus: str | None = None) -> dict:
        """What was evaluated, for results.json: on the default corpus, or on `corpus`."""
        h = self.hparams
        source = self.sources[0] if corpus is None else next(s for s in self.sources if s.name == corpus)
        return {
            **text_description(source.text),
            "tokenizer": self.tokenizer_name,
            "seq_len": h.seq_len,
            "stride": self.stride,
            "bos": h.bos,
            "bos_token_id": self.bos_token_id,
            "uses_bos": self.uses_bos,
            "num_sequences": h.num_sequences,
            "num_windows": None if source.windows is None else int(source.windows.shape[0]),
            "batch_size": h.batch_size,
            "fingerprint": source.fingerprint,
        }


def check_window_options(
    seq_len: int, stride: int | None, bos: bool | Literal["auto"], context_length: int | None
) -> None:
    """Refuse window options that contradict each other or the model's context, before anything loads."""
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


def chosen_bos(tokenizer, bos: bool | Literal["auto"], tokenizer_name: str) -> int | None:
    """The BOS decision of `data.bos` for this tokenizer (named `tokenizer_name`): the id of the
    token put at position 0 of every window, or None for no BOS."""
    if bos == "auto":
        return tokenizer_bos(tokenizer)
    if bos and tokenizer.bos_token_id is None:
        raise InputError(f"bos=true but tokenizer {tokenizer_name!r} has no BOS token; use bos: false")
    return tokenizer.bos_token_id if bos else None


def check_stride(stride: int, seq_len: int, uses_bos: bool) -> None:
    """Refuse a `stride` that skips text tokens once BOS is decided (a BOS window holds `seq_len - 1`)."""
    if stride < 1:
        raise InputError(f"seq_len={seq_len}: a BOS window needs seq_len >= 2 (BOS + text)")
    if stride > seq_len - uses_bos:
        raise InputError(
            f"stride={stride} is above the {seq_len - 1} text tokens of a BOS window (seq_len="
            f"{seq_len}): windows would skip tokens; use stride <= {seq_len - 1}"
        )


def corpus_sources(options: dict[str, Any]) -> list[CorpusWindows]:
    """The text of each corpus, the default first, from the data module's `options` (its
    `__init__` arguments): the entries of `corpora`, checked, or one corpus from the
    top-level options (named after them, `derived_name`)."""
    corpora = options["corpora"]
    if corpora is None:
        top_level = {key: options[key] for key in PER_CORPUS}
        corpora = [Corpus(derived_name(options["dataset"], options["data_files"]), **top_level)]
    else:
        corpora = [as_corpus(entry, i) for i, entry in enumerate(corpora)]
        check_corpora(corpora)
        check_no_top_level_source(options)
    sources = []
    for corpus in corpora:
        with corpus_errors(corpus.name, named=options["corpora"] is not None):
            sources.append(CorpusWindows(corpus))
    return sources


@contextlib.contextmanager
def corpus_errors(corpus: str, named: bool) -> Iterator[None]:
    """Input errors say which corpus they are of, where the corpora are `named` (`data.corpora`)."""
    try:
        yield
    except InputError as err:
        if not named:
            raise
        raise InputError(f"data.corpora {corpus!r}: {err}") from err


def text_description(text: TextSource) -> dict[str, Any]:
    """Where a corpus's text comes from, for results.json: the options that chose it (null
    where they played no part: ``data_files`` take precedence, the toy corpus has no
    configuration or split)."""
    files = text.data_files
    return {
        "dataset": None if files else text.dataset,
        "config_name": None if files or text.dataset == toy.TOY else text.config_name,
        "split": None if files or text.dataset == toy.TOY else text.split,
        "data_files": files,
        "streaming": text.streaming,
    }


def check_no_top_level_source(options: dict[str, Any]) -> None:
    """With `data.corpora`, the top-level dataset options would be ignored: refuse any that is set."""
    defaults = inspect.signature(WindowsDataModule.__init__).parameters
    given = [f"data.{key}={options[key]!r}" for key in PER_CORPUS if options[key] != defaults[key].default]
    if given:
        raise InputError(
            f"{', '.join(given)} with data.corpora: each corpus names its own {', '.join(PER_CORPUS)}; "
            f"set them in its entry of data.corpora, or drop data.corpora"
        )
