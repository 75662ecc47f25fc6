"""The checks every run makes before any work, shared by `validate` and `measure()`: what
only the trainer and the data reveal (strategy, processes, batches, vocabulary), found
before the run directory exists."""

from __future__ import annotations

import math

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, SingleDeviceStrategy

from lit_massive.data import WindowsDataModule
from lit_massive.errors import InputError
from lit_massive.models.loading import ModelSource
from lit_massive.models.sharding import SHARDED, check_shardable, checkpoint_files, is_sharded, strategy_name
from lit_massive.models.toy import TOY
from lit_massive.module import MassiveActivations
from lit_massive.tasks.spec import check_tasks_strategy


def check_before_run(trainer, model: MassiveActivations, datamodule: WindowsDataModule) -> None:
    """Input errors only the data can reveal (text column, tokenizer, windows per process,
    top_k per block output), found before the run directory exists: Lightning creates the
    logger's `version_N` at the start of its setup hooks, before it calls the data module's
    `setup`, so a failure there would leave an empty run directory behind."""
    check_strategy(trainer, model.source)
    check_tasks_strategy(trainer, model.options["analyses"].tasks)
    datamodule.setup("validate")  # idempotent: Lightning's own call reuses the windows
    datamodule.check_processes(trainer.num_nodes * trainer.num_devices)
    check_batch_fraction(trainer, datamodule)
    model.check_windows(datamodule.windows.shape[1], datamodule.largest_token_id())
    model.measure_corpora(datamodule.corpus_names)
    for logger in trainer.loggers:  # no stray `hp_metric = -1` card: nothing here is a training metric
        if isinstance(logger, TensorBoardLogger):
            logger._default_hp_metric = False


def check_batch_fraction(trainer, datamodule: WindowsDataModule) -> None:
    """A fractional `limit_val_batches` that rounds down to no batch on some process (Lightning
    would stop inside the run, after the run directory exists)."""
    limit = trainer.limit_val_batches
    if not isinstance(limit, float) or limit >= 1:
        return
    processes = trainer.num_nodes * trainer.num_devices
    for name, source in zip(datamodule.corpus_names, datamodule.sources, strict=True):
        windows = source.windows.shape[0]
        own = -(-windows // processes) if is_sharded(trainer) else windows // processes  # the fewest of any rank
        batches = -(-own // datamodule.hparams.batch_size)
        if int(batches * limit) < 1:
            corpus = f" of corpus {name!r}" if len(datamodule.sources) > 1 else ""
            plural = "batch" if batches == 1 else "batches"
            raise InputError(
                f"trainer.limit_val_batches={limit}: {limit} of {batches} {plural} per process{corpus} measures "
                f"nothing; valid: a fraction >= {math.ceil(1000 / batches) / 1000}, an int >= 1, or null (all)"
            )


def check_strategy(trainer, source: ModelSource) -> None:
    """Strategies that run these measurements: one process, DDP (whole model per process) or
    model_parallel (decoder layers sharded over all processes, with at least two of them)."""
    strategy, processes = trainer.strategy, trainer.num_nodes * trainer.num_devices
    if not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy, ModelParallelStrategy)):
        raise InputError(
            f"trainer.strategy={strategy_name(strategy)} is not supported; use ddp (a whole model per process) "
            f"or {SHARDED} (FSDP2: decoder layers sharded over the processes)"
        )
    if isinstance(strategy, ModelParallelStrategy):
        if processes < 2:
            raise InputError(
                f"trainer.strategy={SHARDED} with {processes} process: sharding needs at least 2 "
                f"(trainer.devices x trainer.num_nodes >= 2), or drop the strategy to run unsharded"
            )
        check_shardable(source)
        if source.name != TOY:  # safetensors weights, found before any work starts
            checkpoint_files(source.location if source.local else None, source.name)
