"""The Python API: the same Lightning pass as `validate`, from a notebook."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from lit_massive.analyses import analysis_class, registry
from lit_massive.cli.console import quiet_lightning
from lit_massive.data.datamodule import WindowsDataModule
from lit_massive.data.given import GivenWindows, text_windows
from lit_massive.errors import InputError
from lit_massive.models.loading import ModelSource
from lit_massive.module import MassiveActivations
from lit_massive.prerun import check_before_run
from lit_massive.report.callback import RunReport
from lit_massive.results.schema import RunResults


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


def _switches(analyses: Iterable[str] | Mapping[str, Any] | None) -> Any:
    """`measure`'s ``analyses`` as the module's: a mapping is ``model.analyses`` as a config
    gives it; names turn exactly those analyses on (with the groups they require: the sink
    rate with the head scores) and every other analysis with an on/off option off."""
    if analyses is None or isinstance(analyses, Mapping):
        return registry.analysis_options(analyses)
    if isinstance(analyses, str):
        analyses = [analyses]
    wanted = [analysis_class(name) for name in analyses]
    on = {group for cls in wanted for group in (cls.options_group(), *cls.requires)}
    out: dict[str, Any] = {}
    for group, cls in registry.option_groups().items():
        if cls.optional:
            out[group] = {} if group in on else None
        elif "enabled" in cls.Options.__dataclass_fields__:
            out[group] = {"enabled": group in on}
    return registry.analysis_options(out)


def _moved(options: Mapping[str, Any]) -> None:
    """An analysis option given in its old spelling (``head_scores=True``), as one line that
    gives the new one."""
    moved = registry.moved_options()
    for key in options:
        if key in moved:
            raise InputError(f"measure: {key} is now analyses={{...}} ({moved[key]}); e.g. analyses=['head_scores']")


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
    analyses: Iterable[str] | Mapping[str, Any] | None = None,
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
        analyses: names of the analyses to run (``["head_scores", "components"]``: exactly these
            and the layer profile and locator, which always run), or ``model.analyses`` as a
            config gives it (``{"head_scores": {"enabled": True}, "sink_rate": {"epsilon": 0.2}}``;
            ``True``/``False`` stand for ``{"enabled": ...}``). None: the defaults (perplexity
            and super weights on).
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
    _moved(options)
    module = _module(model, {**options, "analyses": _switches(analyses), "variants": variants})
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
            check_before_run(runner, module, datamodule)  # the checks `validate` makes, before any work
        runner.validate(module, datamodule=datamodule, verbose=False)
    return module.results
