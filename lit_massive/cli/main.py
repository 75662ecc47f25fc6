"""`python -m lit_massive COMMAND`: `validate --config configs/X.yaml` (LightningCLI around
the module, cli/validate.py), `rank-heads`, `compare`, `configs` and `fetch`.

Nothing heavy is imported here: `configs`, `rank-heads`, `compare`, the top-level `--help`, a missing
or unknown command and an unknown config name answer without importing lightning, torch or
transformers (seconds of start-up); only `validate` imports them (tests/test_startup.py).
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys

from lit_massive.cli import configs
from lit_massive.cli.commands import COMMANDS, DESCRIPTION, OTHER_COMMANDS, PROG, VALIDATE
from lit_massive.cli.console import one_line_warnings
from lit_massive.errors import InputError

_HELP = ("-h", "--help")


def top_level_help() -> str:
    """`lit_massive --help`: the commands, printed without LightningCLI (no lightning import)."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    parser.add_argument("-c", "--config", help="a config file (or a bundled config's name) for the command after it")
    commands = parser.add_subparsers(title="commands", metavar="{" + ",".join(COMMANDS) + "}")
    commands.add_parser("validate", help=VALIDATE)
    for name, text in OTHER_COMMANDS.items():
        commands.add_parser(name, help=text)
    return parser.format_help()


def _config_after_command(argv: list[str]) -> list[str]:
    """`-c X.yaml validate ...` as `validate -c X.yaml ...`: the config's keys belong to the command."""
    head = []
    while argv and (found := configs.config_flag_at(argv, 0)) is not None:
        span = found[2]
        head, argv = head + argv[:span], argv[span:]
    return argv[:1] + head + argv[1:] if head and argv else head + argv


def _unknown_command(argv: list[str]) -> InputError | None:
    """No command, or a word that is none of them (with the closest one), as one line."""
    if not argv:
        return InputError(f"give a command: {', '.join(COMMANDS)} (`{PROG} --help` describes them)")
    word = argv[0]
    if word.startswith("-") or word in COMMANDS:
        return None
    close = difflib.get_close_matches(word, COMMANDS, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return InputError(f"unknown command {word!r}; {hint}valid: {', '.join(COMMANDS)}")


def _rank() -> int:
    """This process's rank: Lightning's once it is imported (a DDP child), else 0."""
    if "lightning.pytorch" not in sys.modules:
        return 0
    from lightning.pytorch.utilities import rank_zero_only

    return rank_zero_only.rank


def cli_main(args: list[str] | None = None) -> None:
    """Entry point for `validate`, `rank-heads`, `compare` and `configs`; bad input ends the program
    with one line naming the value (printed by rank 0 only). Returns None, so the console
    script's `sys.exit(cli_main())` exits with status 0 after a run."""
    if args is None:  # a program (in-process callers, tests among them, keep their own display)
        one_line_warnings(PROG, _rank)
    argv = _config_after_command(sys.argv[1:] if args is None else list(args))
    try:
        if argv[:1] == ["rank-heads"]:
            from lit_massive.cli import rank_heads

            rank_heads.main(argv[1:])
            return
        if argv[:1] == ["compare"]:
            from lit_massive.cli import compare

            compare.main(argv[1:])
            return
        if argv[:1] == ["configs"]:
            configs.main(argv[1:])
            return
        if argv[:1] == ["fetch"]:
            from lit_massive.cli import fetch

            fetch.main(argv[1:])
            return
        if argv[:1] and argv[0] in _HELP:
            print(top_level_help(), end="")
            sys.exit(0)
        unknown = _unknown_command(argv)
        if unknown is not None:
            raise unknown
        argv = configs.resolve_config_args(argv)  # a bundled config's bare name -> its path; YAML syntax
        from lit_massive.cli import validate  # lightning, torch, transformers: only now

        validate.run(argv, from_sys_argv=args is None)
    except InputError as err:
        sys.exit(f"{PROG}: error: {err}" if _rank() == 0 else 1)
    except KeyboardInterrupt:  # outside Lightning's own handling of it (imports, loading, the summary)
        import signal

        if args is None:  # a program about to exit: a second Ctrl-C must not end in a traceback
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        line = getattr(sys.modules.get("lit_massive.report.callback"), "interrupted_line", None)
        plain = f"{PROG}: interrupted" + ("; nothing was written" if argv[:1] == ["validate"] else "")
        sys.exit((line() if line else plain) if _rank() == 0 else 1)
    except SystemExit:  # Lightning's exit after a Ctrl-C (it restored the SIGINT handler): as above
        import signal

        if args is None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise
    except BrokenPipeError:  # `lit-massive configs | head`: the reader left; no traceback about it
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's own flush at exit fails no more
        sys.exit(1)
    except Exception as err:  # Lightning's teardown after a Ctrl-C failed (a half-loaded model)
        exit_if_interrupted = getattr(sys.modules.get("lit_massive.report.callback"), "exit_if_interrupted", None)
        if exit_if_interrupted is not None:
            exit_if_interrupted(err)  # RunReport has said what is left
        raise
