"""`python -m lit_massive validate --config configs/X.yaml`: LightningCLI around the module."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_massive import bundled, rank_heads
from lit_massive.data import WindowsDataModule
from lit_massive.errors import InputError
from lit_massive.module import MassiveActivations
from lit_massive.reporting import RunReport, ensure_new_run_dir


class MassiveCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # evaluation only: there is nothing to fit
        return {"validate": {"model", "dataloaders", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.model_name_or_path", "data.model_name_or_path")
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")
        parser.link_arguments("model.context_length", "data.context_length", apply_on="instantiate")

    def before_validate(self) -> None:
        # before SaveConfigCallback writes config.yaml; log_dir is a collective on every rank
        ensure_new_run_dir(Path(self.trainer.log_dir))

    def after_validate(self) -> None:
        run_dir = self.trainer.log_dir  # a collective: every rank reads it
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # tear the group down here, together, not in interpreter shutdown
            torch.distributed.destroy_process_group()
        if self.trainer.is_global_zero:
            print(f"Run directory: {run_dir}")


def cli_main(args: list[str] | None = None) -> MassiveCLI | None:
    """Entry point for `validate`, `rank-heads` and `configs`; bad input ends the program
    with one line naming the value."""
    argv = sys.argv[1:] if args is None else args
    try:
        if argv[:1] == ["rank-heads"]:
            return rank_heads.main(argv[1:])
        if argv[:1] == ["configs"]:
            return bundled.main(argv[1:])
        resolved = bundled.resolve_config_args(argv)  # a bundled config's bare name -> its path
        if args is None:
            sys.argv[1:] = resolved  # what LightningCLI and DDP's re-launched processes read
        return MassiveCLI(
            MassiveActivations,
            WindowsDataModule,
            args=None if args is None else resolved,
            # the module measures, the report callback writes; a persistent callback, so
            # --trainer.callbacks adds to it and config.yaml does not list it
            trainer_defaults={"callbacks": [RunReport()]},
            parser_kwargs={
                "description": "Measure massive activations: `validate --config X.yaml` (a file, or a "
                "bundled config's name: list them with `configs`); rank a run's heads with "
                "`rank-heads RUN/results.json --k 3`."
            },
        )
    except InputError as err:
        sys.exit(f"lit_massive: error: {err}")
