"""`validate`: LightningCLI around the module. Imported only when a run (or `validate --help`)
needs it: it brings in lightning, torch and transformers, which take seconds to import."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lit_massive.analyses import columns_of
from lit_massive.cli.console import did_you_mean, one_line, quiet_lightning
from lit_massive.cli.main import DESCRIPTION, OTHER_COMMANDS, PROG
from lit_massive.data import WindowsDataModule
from lit_massive.errors import InputError
from lit_massive.models.loading import ModelSource
from lit_massive.models.sharding import SHARDED, check_shardable, checkpoint_files, register_strategy, strategy_name
from lit_massive.models.toy import TOY
from lit_massive.module import MassiveActivations
from lit_massive.report.callback import RunReport, ensure_new_run_dir
from lit_massive.report.comparison import model_run_name
from lit_massive.report.tables import terminal_summary

# Trainer options that only training uses: left out of --help and the config (their defaults apply)
TRAINING_ONLY = {
    "max_epochs", "min_epochs", "max_steps", "min_steps", "max_time", "limit_train_batches",
    "limit_test_batches", "limit_predict_batches", "overfit_batches", "val_check_interval",
    "check_val_every_n_epoch", "num_sanity_val_steps", "log_every_n_steps", "enable_checkpointing",
    "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm", "detect_anomaly",
    "reload_dataloaders_every_n_epochs", "use_distributed_sampler", "sync_batchnorm", "model_registry",
    "barebones", "benchmark", "enable_autolog_hparams",
}  # fmt: skip


def _options(parser) -> set[str]:
    """Every option string of `parser` and of its subcommands' parsers."""
    found = set(getattr(parser, "_option_string_actions", {}))
    subcommands = getattr(parser, "_subcommands_action", None)
    for sub in getattr(subcommands, "_name_parser_map", {}).values():
        found |= _options(sub)
    return found


class OneLineErrorParser(LightningArgumentParser):
    """Bad arguments end with one line naming the value (via `InputError`), not a usage
    block followed by a type dump; an option that does not exist gets the closest one."""

    def error(self, message: str, ex: Exception | None = None):
        raise InputError(did_you_mean(one_line(message), _options(self))) from ex


class MassiveCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # evaluation only: there is nothing to fit, no checkpoint to load
        return {"validate": {"model", "dataloaders", "datamodule", "ckpt_path", "verbose", "weights_only"}}

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs) -> None:
        super()._add_subcommands(parser, **kwargs)
        for name, help in OTHER_COMMANDS.items():  # shown in the help; cli_main runs them
            parser._subcommands_action.add_subcommand(name, OneLineErrorParser(description=help), help=help)

    default_logger: TensorBoardLogger | None = None  # the one `instantiate_trainer` made, if it made one

    def instantiate_trainer(self, **kwargs):
        """Lightning's own refusals of a flag combination (`fsdp` on a CPU, `16-mixed` with
        `model_parallel`, ...) as one-line input errors. Without a `trainer.logger` of the
        user's, the run's logger is `default_logger`'s (config.yaml still says `logger: null`,
        so a rerun of it is named the same way)."""
        trainer = self._get(self.config_init, "trainer", default={})
        if "logger" not in kwargs and trainer.get("logger") in (None, True):
            self.default_logger = default_logger(self.model.source, trainer.get("default_root_dir"))
            kwargs["logger"] = self.default_logger
        try:
            return super().instantiate_trainer(**kwargs)
        except (ValueError, MisconfigurationException) as err:
            raise InputError(f"trainer: {str(err).splitlines()[0]}") from err

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # the project's options first: `validate --help` shows model.* and data.* before the Trainer's
        parser.add_lightning_class_args(self._model_class, "model")
        parser.add_lightning_class_args(self._datamodule_class, "data")
        trainer_defaults = {"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"}
        parser.add_class_arguments(
            self.trainer_class, "trainer", fail_untyped=False, instantiate=False, sub_configs=True, skip=TRAINING_ONLY
        )
        parser.set_defaults(trainer_defaults)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.model_name_or_path", "data.model_name_or_path")
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")
        parser.link_arguments("model.gguf_file", "data.gguf_file")
        parser.link_arguments("model.revision", "data.revision")
        parser.link_arguments("model.context_length", "data.context_length", apply_on="instantiate")

    def before_validate(self) -> None:
        # before SaveConfigCallback writes config.yaml; log_dir is a collective on every rank
        self.run_dir = Path(self.trainer.log_dir)
        ensure_new_run_dir(self.run_dir)
        check_before_run(self.trainer, self.model, self.datamodule)

    def after_validate(self) -> None:
        # No collective after the run (trainer.log_dir is one): a gloo worker thread may still
        # hold a finished broadcast's tensors when the interpreter exits, and freeing them then
        # aborts the process ("terminate called without an active exception"). Seen under the
        # sharded strategy only, whose groups seem to outlive destroy_process_group.
        run_dir = self.run_dir
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # tear the group down here, together, not in interpreter shutdown
            torch.distributed.destroy_process_group()
        if self.trainer.is_global_zero:
            if self.model.results is not None:
                print(terminal_summary(self.model.results.by_corpus(), columns_of))
            print(f"Run directory: {run_dir}")
            if any(isinstance(lg, TensorBoardLogger) for lg in self.trainer.loggers):
                # every model's runs under one logdir, so TensorBoard overlays them (runs named model/version_N)
                ours = self.default_logger is not None and self.trainer.logger is self.default_logger
                logdir = self.default_logger.save_dir if ours else Path(run_dir).parent
                # what a layout cannot set: the page's smoothing and y scale
                print(
                    f"TensorBoard: tensorboard --logdir {logdir}  (per-layer curves: set "
                    f"smoothing to 0, and a log y axis for the layer profile)"
                )


def default_logger(source: ModelSource, default_root_dir: str | None) -> TensorBoardLogger:
    """Lightning's default logger (TensorBoard, the SLURM job id as version where there is
    one), one folder deeper: `<default_root_dir>/lightning_logs/<model-name>/version_N`, so
    TensorBoard pointed at lightning_logs/ names each run after its model
    (`model_run_name`: `gpt2`, `Llama-2-7b-hf`, a local checkpoint's folder name, `toy`, a
    GGUF file's name, `pythia-160m@step1000` at a revision)."""
    root = os.path.normpath(os.path.expanduser(default_root_dir or os.getcwd()))
    return TensorBoardLogger(
        save_dir=os.path.join(root, "lightning_logs"),
        name=model_run_name(source.name, revision=source.revision, gguf_file=source.gguf_file),
        version=SLURMEnvironment.job_id(),
    )


def check_before_run(trainer, model: MassiveActivations, datamodule: WindowsDataModule) -> None:
    """Input errors only the data can reveal (text column, tokenizer, windows per process,
    top_k per block output), found before the run directory exists: Lightning creates the
    logger's `version_N` at the start of its setup hooks, before it calls the data module's
    `setup`, so a failure there would leave an empty run directory behind."""
    check_strategy(trainer, model.source)
    datamodule.setup("validate")  # idempotent: Lightning's own call reuses the windows
    datamodule.check_processes(trainer.num_nodes * trainer.num_devices)
    model.check_windows(datamodule.windows.shape[1], datamodule.largest_token_id())
    model.measure_corpora(datamodule.corpus_names)
    for logger in trainer.loggers:  # no stray `hp_metric = -1` card: nothing here is a training metric
        if isinstance(logger, TensorBoardLogger):
            logger._default_hp_metric = False


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


def run(argv: list[str], from_sys_argv: bool) -> None:
    """`validate ...` (and LightningCLI's own handling of anything else) on `argv`, whose
    config names are resolved already. With `from_sys_argv`, LightningCLI reads sys.argv
    itself (DDP relaunches it for the other ranks)."""
    quiet_lightning()
    register_strategy()  # --trainer.strategy model_parallel
    if from_sys_argv:
        sys.argv[1:] = argv
    MassiveCLI(
        MassiveActivations,
        WindowsDataModule,
        args=None if from_sys_argv else argv,
        # the module measures, the report callback writes; a persistent callback, so
        # --trainer.callbacks adds to it and config.yaml does not list it
        trainer_defaults={"callbacks": [RunReport()]},
        seed_everything_default=False,  # nothing is drawn at random outside the seeded variants
        auto_configure_optimizers=False,
        parser_class=OneLineErrorParser,
        parser_kwargs={"prog": PROG, "description": DESCRIPTION},
    )
