"""What the terminal shows: bad arguments as one line, and no Lightning start-up chatter.

Two parsers end bad arguments with one line (via `InputError`) instead of a usage block:
`OneLineErrorParser` for LightningCLI's `validate`, `OneLineArgumentParser` for the plain
argparse subcommands (`rank-heads`, `configs`). `quiet_lightning` drops Lightning's
device-availability lines and tips. The end-of-run summary is report/tables.py's.
The CLI installs these; they change no result, only what a user reads.
"""

from __future__ import annotations

import argparse
import logging
import re
import warnings

from lightning.pytorch.cli import LightningArgumentParser

from lit_massive.errors import InputError
from lit_massive.options import restriction_text

# Lightning's info lines that say nothing about this run: device availability (the
# accelerator is in results.json), and product tips
_CHATTER = ("GPU available:", "TPU available:", "HPU available:", "💡 Tip:")
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_CHATTER)


def quiet_lightning() -> None:
    """Drop Lightning's device-availability lines and product tips, and one deprecation
    warning raised inside Lightning itself (torch's `LeafSpec`); every other warning stays."""
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropChatter) for f in logger.filters):
            logger.addFilter(_DropChatter())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def _given(lines: list[str]) -> str | None:
    """The value of jsonargparse's "Given value: X" line, if there is one."""
    return next((line.removeprefix("Given value:").strip() for line in lines if line.startswith("Given value:")), None)


def one_line(message: str) -> str:
    """A jsonargparse error as one line: the key, the value given and, for a choice, the
    valid values, instead of the full type dump (`--trainer.precision 8-true`)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    key = re.match(r'Parser key "([^"]+)":\s*(.*)', lines[0]) if lines else None
    if key is None:
        return " ".join(lines)
    restricted = re.search(r"Not of type \w+: (?:(.+?) )?does not conform to restriction (\S+)", message)
    if restricted:  # PositiveInt, NonNegativeFloat, ... (in a union with None, the value is on its own line)
        value = restricted.group(1) or _given(lines)
        return f"{key.group(1)}={value}: {restriction_text(restricted.group(0))}"
    given = _given(lines)
    if given is None:
        got = re.search(r"Got value: (.*)$", message.strip())
        given = got.group(1).strip() if got and "typing.Literal" in message else None
    if given is None:
        return f"{key.group(1)}: {key.group(2) or (lines[1] if len(lines) > 1 else '')}".strip()
    choices: list[str] = []
    for literal in re.findall(r"Expected a typing\.Literal\[([^\]]*)\]", message):
        for choice in literal.split(","):
            choice = choice.strip().strip("'\"")
            if choice not in choices:
                choices.append(choice)
    valid = f"; valid: {', '.join(choices)}" if choices else f" ({key.group(2) or lines[1]})"
    return f"{key.group(1)}={given!r} is not valid{valid}"


class OneLineErrorParser(LightningArgumentParser):
    """Bad arguments end with one line naming the value (via `InputError`), not a usage
    block followed by a type dump."""

    def error(self, message: str, ex: Exception | None = None):
        raise InputError(one_line(message)) from ex


class OneLineArgumentParser(argparse.ArgumentParser):
    """The parser of a plain subcommand (`rank-heads`, `configs`; `prog` is `lit_massive NAME`):
    bad arguments end with one line `NAME: message` (via `InputError`), not a usage block."""

    def error(self, message: str):
        raise InputError(f"{self.prog.rsplit(' ', 1)[-1]}: {message}")
