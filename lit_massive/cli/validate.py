"""`validate`: LightningCLI around the module. Imported only when a run (or `validate --help`)
needs it: it brings in lightning, torch and transformers, which take seconds to import."""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lit_massive.analyses import columns_of
from lit_massive.analyses.registry import moved_options
from lit_massive.cli.commands import DESCRIPTION, OTHER_COMMANDS, PROG
from lit_massive.cli.console import did_you_mean, moved_option, one_line, quiet_lightning
from lit_massive.data import WindowsDataModule
from lit_massive.errors import InputError
from lit_massive.models.loading import ModelSource, load_config
from lit_massive.models.sharding import (
    SHARDED,
    register_strategy,
)
from lit_massive.module import MassiveActivations
from lit_massive.prerun import check_before_run
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

# The precisions this tool runs: `--help` and a typo's error list these and no others. Not
# 64-true (the statistics are accumulated in float64 already, and the attention probes
# compute in float32, which a float64 model breaks) nor transformer-engine (FP8 layers,
# never tested with these measurements).
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true")
PRECISION_HELP = (
    "32-true (the default; null means it too); bf16-mixed or 16-mixed: float32 weights, half-precision "
    "matmuls (on a CPU 16-mixed runs as bf16-mixed); bf16-true or 16-true: weights in half precision. "
    "Statistics are accumulated in float32 or wider (sums in float64) with any of them."
)
# Lightning's help of these options offers values this tool cannot run: what it can instead
TRAINER_HELP = {
    "accelerator": "where the model runs: auto (a GPU where this machine has one, else the CPU), cpu, or gpu "
    "(cuda, mps) where this machine has one.",
    "strategy": f"auto, ddp (a whole model per process) or {SHARDED} (decoder layers sharded over 2 or more "
    "processes); other strategies are refused.",
    "devices": "processes, one per device: a number >= 1, or auto (on a CPU: 1); on GPUs also -1 (all of "
    'them) or device indices ([0, 1] or "0,1").',
    "fast_dev_run": "false only: a fast_dev_run drops the logger, so no results are written (a quick run: "
    "--data.num_sequences 2).",
    "limit_val_batches": "batches per process to measure: an int >= 1, a fraction in (0, 1] of them, or null "
    "(all); a value that leaves no batch is refused.",
}


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
        line = one_line(message)
        raise InputError(moved_option(line, moved_options()) or did_you_mean(line, _options(self))) from ex


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
            self.trainer_class,
            "trainer",
            fail_untyped=False,
            instantiate=False,
            sub_configs=True,
            skip=TRAINING_ONLY | {"precision"},
        )
        parser.groups["trainer"].add_argument(
            "--trainer.precision", type=Literal[PRECISIONS] | None, default=None, help=PRECISION_HELP
        )
        for name, text in TRAINER_HELP.items():
            parser._option_string_actions[f"--trainer.{name}"].help = text
        parser.set_defaults(trainer_defaults)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.model_name_or_path", "data.model_name_or_path")
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")
        parser.link_arguments("model.gguf_file", "data.gguf_file")
        parser.link_arguments("model.revision", "data.revision")
        parser.link_arguments("model.context_length", "data.context_length", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """Values the run cannot honour, refused before the model or the data load."""
        check_trainer_options(self._get(self.config, "trainer"))
        check_attention(self._get(self.config, "model"))

    def instantiate_classes(self) -> None:
        """transformers' refusal of an attention backend the check let through (a kernel that
        will not load, a check only the model's construction makes) as one line."""
        try:
            super().instantiate_classes()
        except InputError:
            raise
        except (ValueError, ImportError) as err:
            impl = self._get(self.config, "model").get("attn_implementation")
            if impl is None or not any(word in str(err).lower() for word in ("attn", "attention", impl.lower())):
                raise
            raise InputError(
                f"model.attn_implementation={impl!r}: {str(err).splitlines()[0]} (eager works with every "
                f"model; null: the model's default)"
            ) from err

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


def _shown(value: Any) -> str:
    """A value as a config writes it: true, 0.5, -2, 'auto' (a number given as a string, as
    `--trainer.devices -2` is, shown as the number)."""
    if isinstance(value, bool):
        return str(value).lower()
    return value.strip() if isinstance(value, str) and value.strip().lstrip("-").isdigit() else repr(value)


def available_accelerators() -> list[str]:
    """The accelerator names this machine runs: auto, cpu, and those of its GPUs (gpu for CUDA or MPS)."""
    here = [name for name, entry in AcceleratorRegistry.items() if entry["accelerator"].is_available()]
    gpu = ["gpu"] if {"cuda", "mps"} & set(here) else []
    return ["auto", "cpu", *gpu, *sorted(set(here) - {"cpu"})]


def _on_cpu(accelerator: Any) -> bool:
    """Whether `accelerator` means the CPU: cpu, or auto on a machine with nothing else."""
    return accelerator == "cpu" or (accelerator in ("auto", None) and available_accelerators() == ["auto", "cpu"])


def _accelerator_problem(value: Any, trainer: Mapping) -> str | None:
    if not isinstance(value, str) or value in available_accelerators():
        return None  # an Accelerator object (a class path in the config) is Lightning's to check
    known = value == "gpu" or value in AcceleratorRegistry
    why = "this machine has no such device" if known else "no such accelerator"
    return f"{why}; valid here: {', '.join(available_accelerators())}"


def _devices_ok(value: Any, cpu: bool) -> bool:
    """Lightning's forms of `devices`: a count, -1 (all GPUs), auto, GPU indices (a list or "0,1")."""
    if isinstance(value, str):
        text = value.strip()
        if text == "auto":
            return True
        if text.lstrip("-").isdigit():
            value = int(text)
        elif not cpu and "," in text:
            value = [int(i) for i in text.split(",") if i.strip().isdigit()] or None
        else:
            return False
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 1 or (value == -1 and not cpu)
    return not cpu and isinstance(value, list) and bool(value) and all(isinstance(i, int) and i >= 0 for i in value)


def _devices_problem(value: Any, trainer: Mapping) -> str | None:
    cpu = _on_cpu(trainer.get("accelerator"))
    if _devices_ok(value, cpu):
        return None
    if cpu:
        return "not valid on the cpu accelerator; valid: a number of processes >= 1, or auto (1)"
    return 'not valid; valid: a number of devices >= 1, -1 or auto (all), or device indices such as [0, 1] or "0,1"'


def _fast_dev_run_problem(value: Any, trainer: Mapping) -> str | None:
    if value is None or value is False or value == 0:
        return None
    return "a fast_dev_run drops the logger, so nothing is written; valid: false (a quick run: --data.num_sequences 2)"


_LIMIT_VALID = "valid: an int >= 1 (batches per process), a fraction in (0, 1], or null (all)"


def _limit_val_batches_problem(value: Any, trainer: Mapping) -> str | None:
    if value is None or (isinstance(value, int) and value >= 1) or (isinstance(value, float) and 0 < value <= 1):
        return None
    return f"measures nothing; {_LIMIT_VALID}" if value == 0 else _LIMIT_VALID


# Trainer options whose Lightning type admits values this tool cannot honour: key -> (value, trainer) -> why not
TRAINER_CHECKS: dict[str, Callable[[Any, Mapping], str | None]] = {
    "accelerator": _accelerator_problem,
    "devices": _devices_problem,
    "fast_dev_run": _fast_dev_run_problem,
    "limit_val_batches": _limit_val_batches_problem,
}


def check_trainer_options(trainer: Mapping) -> None:
    """Refuse a Trainer value this tool cannot run or that would measure nothing, before any
    work, naming what works (Lightning would fail later, with a traceback or an empty run)."""
    for key, problem_of in TRAINER_CHECKS.items():
        value = trainer.get(key)
        problem = problem_of(value, trainer)
        if problem is not None:
            raise InputError(f"trainer.{key}={_shown(value)}: {problem}")


def _model_class(model: Mapping) -> type | None:
    """The transformers class the model loads as; None when the config does not say (remote code)."""
    from transformers import AutoModelForCausalLM

    name, revision = model.get("model_name_or_path"), model.get("revision")
    config = load_config(name, None, model.get("trust_remote_code"), model.get("gguf_file"), revision)
    return AutoModelForCausalLM._model_mapping.get(type(config), None)


_FLASH = tuple(f"flash_attention_{v}" for v in (2, 3, 4))
# backends transformers has that these measurements cannot use, and why (probes/attention.py
# reads each attention call's query, key and mask tensor)
_NOT_MEASURABLE = {"flex_attention": "the attention probes cannot read flex attention's block masks"}


def _supports(cls: type | None, backend: str) -> bool:
    """Whether the model class (any model: None) says it can use `backend`."""
    flag = {"sdpa": "_supports_sdpa", "flex_attention": "_supports_flex_attn"}.get(backend, "_supports_flash_attn")
    return backend == "eager" or cls is None or bool(getattr(cls, flag, False))


def attention_backends(cls: type | None) -> tuple[list[str], list[str]]:
    """(listed, accepted): the attention backends `cls` (any model: None) supports that this
    machine runs; accepted adds flash attention through the `kernels` package, which only
    loading can tell works (it may fetch a kernel from the hub)."""
    from transformers import utils

    runs = ["eager", "sdpa"] + [name for name in _FLASH if getattr(utils, f"is_flash_attn_{name[-1]}_available")()]
    listed = [name for name in runs if _supports(cls, name)]
    kernels = utils.is_kernels_available() and torch.cuda.is_available()
    return listed, listed + [name for name in _FLASH if kernels and _supports(cls, name) and name not in listed]


def _why_not(impl: str, cls: type | None) -> str:
    """Why a backend transformers knows cannot run: these measurements, the model's class, or the machine."""
    if impl in _NOT_MEASURABLE:
        return _NOT_MEASURABLE[impl]
    if not _supports(cls, impl):
        return f"{cls.__name__} does not support it"
    if impl in _FLASH:
        return "it needs a CUDA GPU and the flash-attn package (or the kernels package)"
    return "this machine's torch cannot run it"


def check_attention(model: Mapping) -> None:
    """`model.attn_implementation` must name a backend the model supports and this machine
    runs; refused before any work, naming those (transformers' own error is a traceback)."""
    impl = model.get("attn_implementation")
    if impl is None or "/" in impl:  # null: the model's own; org/name: a hub kernel, which loading checks
        return
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    cls = _model_class(model)
    listed, accepted = attention_backends(cls)
    if impl.removeprefix("paged|") in accepted:  # paged|eager, and the paged| prefix transformers drops
        return
    known = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
    valid = f"valid here: {', '.join(listed)} (null: the model's default)"
    if impl not in known:
        close = difflib.get_close_matches(impl, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise InputError(f"model.attn_implementation={impl!r} is not valid{hint}; {valid}")
    raise InputError(f"model.attn_implementation={impl!r}: {_why_not(impl, cls)}; {valid}")


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
