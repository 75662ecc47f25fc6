"""The command line: `validate` (LightningCLI, cli/validate.py), `rank-heads`, `configs`.

Importing this package imports nothing heavy: `cli_main` imports lightning only for `validate`."""

from lit_massive.cli.main import cli_main

__all__ = ["cli_main"]
