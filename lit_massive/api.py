"""The Python API: the same Lightning pass as `validate`, from a notebook."""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from lit_massive.analyses import ANALYSES, analysis_class
from lit_massive.cli.console import quiet_lightning
from lit_massive.data.datamodule import WindowsDataModule
from lit_massive.data.given import GivenWindows, text_windows
from lit_massive.errors import InputError
from lit_massive.models.loading import ModelSource
from lit_massive.module import MassiveActivations
from lit_massive.report.callback import RunReport
from lit_massive.report.schema import RunResults


def _module(model: str | nn.Module, options: dict[str, Any]) -> MassiveActivations:
    """The LightningModule for a name/path, or for a model already loaded (used as it is)."""
    if isinstance(model, str):
        return MassiveActivations(model_name_or_path=model, **options)
    if not hasattr(model, "config"):
        raise InputError(f"model: a transformers PreTrainedModel or a name/path, got {type(model).__name__}")

    class Loaded(MassiveActivations):
        def resolve_source(self) -> ModelSource:  # only named: its weights are in memory already
            name = self.hparams.model_name_or_path
            return ModelSource(name, name, local=Path(name).expanduser().is_dir())

        def build_structure(self) -> nn.Module:
            return model

        def load_model(self) -> nn.Module:
            return model

    return Loaded(model_name_or_path=getattr(model.config, "name_or_path", "") or "in-memory", **options)


def _switches(analyses: Iterable[str] | None, given: Iterable[str] = ()) -> dict[str, Any]:
    """`analyses` as module options: exactly the named optional analyses on, the others off
    (a flag true or false; an option holding settings, such as ``feature_view``, its
    defaults or null). Analyses that share an option go on together (``sink_rate`` with
    ``head_scores``); the attention internals also need ``head_scores``. An option holding
    settings that the caller gives (`given`: ``tasks={...}``) is left as given."""
    if analyses is None:
        return {}
    wanted = {analysis_class(name).name for name in analyses}
    defaults = inspect.signature(MassiveActivations.__init__).parameters
    out: dict[str, Any] = {}
    for name, cls in ANALYSES.items():
        if cls.option is None:
            continue
        flag = isinstance(defaults[cls.option].default, bool)
        if not flag and cls.option in given:  # settings the caller gave
            continue
        on = name in wanted or bool(out.get(cls.option))
        out[cls.option] = on if flag else ({} if on else None)
    return out


def _loggers() -> list[logging.Logger]:
    return [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Lightning as quiet as in the CLI (`quiet_lightning`: no device-availability lines, no
    tips, not the deprecation warning Lightning raises itself) for this call only: Lightning
    runs of a user's own, later in the same notebook, keep their lines. Errors, every other
    warning and this project's `RunWarning`s show as usual."""
    before = {id(f) for lg in _loggers() for f in lg.filters}
    with warnings.catch_warnings():  # restores the warning filters afterwards
        quiet_lightning()
        added = [(lg, f) for lg in _loggers() for f in lg.filters if id(f) not in before]
        try:
            yield
        finally:
            for lg, f in added:
                lg.removeFilter(f)


def measure(
    model: str | nn.Module,
    data: dict[str, Any] | None = None,
    *,
    tokenizer: Any = None,
    text: str | list[str] | None = None,
    windows: Tensor | None = None,
    seq_len: int = 128,
    stride: int | None = None,
    num_sequences: int | None = None,
    batch_size: int = 1,
    analyses: Iterable[str] | None = None,
    variants: dict[str, Any] | None = None,
    run_dir: str | Path | None = None,
    trainer: dict[str, Any] | None = None,
    **options: Any,
) -> RunResults:
    """Measure a model in one Lightning pass, as ``validate`` does, and return its `RunResults`.

    Args:
        model: a hub id, a local directory or ``"toy"``, or a ``transformers`` model already
            loaded (its weights are used as they are; nothing is copied).
        data: ``data.*`` options of the CLI (``{"dataset": "toy", "seq_len": 128}``,
            ``{"data_files": "wiki.test.parquet"}``, ...); or give ``text`` and ``tokenizer``,
            or ``windows``, instead.
        tokenizer: decodes token ids in the results, and tokenises ``text``.
        text: a string or rows of text (joined with a blank line), cut into windows of
            ``seq_len`` tokens every ``stride`` (default ``seq_len``) tokens; at most
            ``num_sequences`` windows (None: all).
        windows: a (N, T) long tensor of token ids, one window per row.
        analyses: the optional analyses to run (``"head_scores"``, ``"perplexity"``,
            ``"components"``, ``"feature_view"``); the layer profile and the locator always
            run. None: the module's defaults (perplexity on).
        variants: ``model.variants`` as in a config: name -> heads to prune, a selection,
            or an edit.
        run_dir: write results.json, figures and TensorBoard events there (None: nothing is written).
        trainer: extra ``Trainer`` arguments (default: one CPU or GPU process, no progress bar).
        **options: any other ``model.*`` option (``top_k``, ``massive_threshold``, ``sweep``, ...).

    Returns:
        `RunResults`: ``.variants`` holds each variant's results.json entry;
        ``.layer_frame()`` and ``.head_frame()`` give pandas DataFrames.

    Example::

        import lit_massive
        results = lit_massive.measure("toy", {"dataset": "toy", "seq_len": 128, "num_sequences": 8},
                                      analyses=["head_scores"], variants={"cut": [[5, 1]]})
        results.layer_frame().query("variant == 'baseline'")[["layer", "top1", "median"]]
    """
    given = sum(x is not None for x in (data, text, windows))
    if given != 1:
        raise InputError("measure: give exactly one of data (data.* options), text (with tokenizer), or windows")
    module = _module(model, {**options, **_switches(analyses, options), "variants": variants})
    if data is not None:
        datamodule = WindowsDataModule(
            **{key: module.hparams[key] for key in ("model_name_or_path", "gguf_file", "revision")},
            **data,
            context_length=module.context_length,
        )
    else:
        if text is not None:
            if tokenizer is None:
                raise InputError("measure: text needs a tokenizer")
            windows, stride, bos, counts = text_windows(tokenizer, text, seq_len, stride, num_sequences)
        else:
            bos, counts = None, None  # token ids alone: no text to count bytes and words of
        datamodule = GivenWindows(windows, tokenizer, stride, bos, batch_size, counts)
    settings = {"accelerator": "auto", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False,
                "logger": False, **(trainer or {})}  # fmt: skip
    if run_dir is not None:
        settings["logger"] = TensorBoardLogger(str(run_dir), name="", version="")
        settings["callbacks"] = [*settings.get("callbacks", []), RunReport()]
    with _quiet():
        runner = L.Trainer(**settings)
        if isinstance(datamodule, WindowsDataModule):
            datamodule.setup("validate")
            module.check_windows(datamodule.windows.shape[1], datamodule.largest_token_id())
            module.measure_corpora(datamodule.corpus_names)
        runner.validate(module, datamodule=datamodule, verbose=False)
    return module.results
