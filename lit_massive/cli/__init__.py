"""The command line: `validate` (LightningCLI), `rank-heads`, `configs`."""

from lit_massive.cli.main import cli_main

__all__ = ["cli_main"]
