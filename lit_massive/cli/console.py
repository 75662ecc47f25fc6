"""What the terminal shows: bad arguments as one line, and no Lightning start-up chatter.

Two parsers end bad arguments with one line (via `InputError`) instead of a usage block:
`OneLineErrorParser` (cli/validate.py) for LightningCLI's `validate`, with the messages
`one_line` and `did_you_mean` make here, and `OneLineArgumentParser` for the plain argparse
subcommands (`rank-heads`, `configs`). `quiet_lightning` drops Lightning's
device-availability lines and tips. The end-of-run summary is report/tables.py's.
The CLI installs these; they change no result, only what a user reads. This module imports
nothing heavy (no lightning, torch or jsonargparse): `configs` and `rank-heads` use it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import logging
import re
import sys
import warnings
from collections.abc import Callable, Iterable

from lit_massive.errors import InputError, RunWarning

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


def one_line_warnings(prog: str, rank: Callable[[], int] = lambda: 0) -> None:
    """Show a `RunWarning` as one `PROG: warning: MESSAGE` line, on rank 0 only (every
    process checks the variants); every other warning as Python does (a library's
    deprecation names its file and line, which helps its reader)."""
    python_s = warnings.showwarning
    if getattr(python_s, "one_line", False):
        return

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, RunWarning):
            if rank() == 0:
                print(f"{prog}: warning: {message}", file=file or sys.stderr, flush=True)
        else:
            python_s(message, category, filename, lineno, file, line)

    show.one_line = True
    warnings.showwarning = show


def _given(lines: list[str]) -> str | None:
    """The value of jsonargparse's "Given value: X" line, if there is one."""
    return next((line.removeprefix("Given value:").strip() for line in lines if line.startswith("Given value:")), None)


# the errors of a Union's subtypes that only say "not this one": left out of the one line
_NOT_THIS_ONE = re.compile(
    r"Expected a <class '(list|tuple|dict|NoneType)'>$|Expected a path but |Option '[^']*' is not accepted|"
    r"Subclasses are disabled for |Not a valid subclass of |Does not validate against any of the Union subtypes|"
    r"Subclass types expect one of|a class path \(str\)|a dict with|a dict without"
)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _form_keys(given: str) -> list[str]:
    """The keys of a mapping jsonargparse shows as given (a dict, or a Namespace of a class)."""
    named = re.match(r"Namespace\(class_path='[\w.]*?(\w+)'", given)
    if named:
        return [_snake(named.group(1))]
    try:
        value = ast.literal_eval(given)
    except (ValueError, SyntaxError):
        return []
    return [str(k) for k in value] if isinstance(value, dict) else []


def _variant_forms() -> dict[str, str]:
    """Each variant form's key -> a YAML example (imported here, when an error is shown:
    validate's parser, which makes these errors, has imported the specs already)."""
    from lit_massive.variants.specs import FORM_EXAMPLES

    return FORM_EXAMPLES


def _shown(forms: dict[str, str]) -> str:
    return ", ".join(["[[layer, head], ...]", *forms.values()])


def _corpus_error(key: str, leaves: list[str]) -> str | None:
    """A `data.corpora` entry that is no `Corpus`: its missing or unknown key, and the keys a corpus has."""
    from lit_massive.data.corpora import Corpus  # validate's parser, which makes these errors, has imported it

    fields = [f.name for f in dataclasses.fields(Corpus)]
    for leaf in leaves:
        required = re.match(r"the following arguments are required: (.+)$", leaf)
        unknown = re.match(r"Option '([^']*)' is not accepted", leaf)
        if required:
            return f"{key}: a corpus needs {required.group(1)}; a corpus has {', '.join(fields)}"
        if unknown:
            close = difflib.get_close_matches(unknown.group(1), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"{key}: unknown key {unknown.group(1)!r}{hint}; a corpus has {', '.join(fields)}"
    return None


def _union_error(key: str, message: str) -> str | None:
    """A value no member of a Union takes (a variant spec: `[[l, h], ...]`, `{select: ...}`,
    ...) as the one error that matters: the member whose keys the value has, or the closest
    key, instead of every member's refusal and a Namespace dump."""
    if "Does not validate against any of the Union subtypes" not in message:
        return None
    leaves = [m.strip() for m in re.findall(r"^\s*- (.+)$", message, re.M)]
    if key.endswith("corpora") and (corpus := _corpus_error(key, leaves)) is not None:
        return corpus
    useful = [leaf for leaf in leaves if not _NOT_THIS_ONE.match(leaf)]
    givens = [g.strip() for g in re.findall(r"^\s*Given value: (.*)$", message, re.M)]
    inner, outer = (givens[0], givens[-1]) if givens else ("", "")
    where = key
    named = re.search(r"'([^']+)': " + re.escape(inner), outer) if inner and inner != outer else None
    if named:  # the entry of a mapping (model.variants.NAME)
        where = f"{key}.{named.group(1)}"
    forms = _variant_forms() if key.endswith("variants") else {}
    keys = _form_keys(inner)
    form = next((k for k in keys if k in forms), None)
    for leaf in useful:
        required = re.match(r"the following arguments are required: (.+)$", leaf)
        missing = re.match(r"(\w+): Missing required keys: \{([^}]*)\}", leaf)
        if required or missing:
            field = (required or missing).group(1 if required else 2).replace("'", "")
            owner = form if required else missing.group(1)
            example = f": {forms[owner]}" if owner in forms else ""
            return f"{where}: {owner or 'value'} needs {field}{example}"
        pair = re.match(r"Expected a tuple with (\d+) elements\. Got value: (.*)$", leaf)
        if pair and forms:
            return f"{where}: {pair.group(2)} is not a [layer, head] pair; a variant is one of: {_shown(forms)}"
        typed = re.match(r"(?:(\w+): )?Expected a <class '(\w+)'>\. Got value: (.*)$", leaf)
        if typed:
            field, expected, value = typed.groups()
            at = f"{where}: {field}" if field else where
            return f"{at}={value!r} is not valid (expected {expected})"
        return f"{where}: {leaf}"
    if forms:
        fields = sorted({*forms, "k", "scores", "by", "prune_heads"})
        unknown = [k for k in keys if k not in fields]
        close = difflib.get_close_matches(unknown[0], fields, n=1) if unknown else []
        hint = f"unknown key {unknown[0]!r}" + (f" (did you mean {close[0]!r}?)" if close else "") if unknown else ""
        return f"{where}: {hint or f'{inner} is not a variant'}; a variant is one of: {_shown(forms)}"
    return f"{key}={inner} is not valid (no type of the union takes it)" if inner else None


# what jsonargparse says a value should have been: a Literal's choices, or a class
_EXPECTED = re.compile(r"Expected a (?:typing\.Literal\[([^\]]*)\]|<class '(\w+)'>)")
# the classes whose values can be listed, as a config writes them
_CLASS_CHOICES = {"bool": ("true", "false"), "NoneType": ("null",)}


def _choices(lines: list[str]) -> list[str] | None:
    """Every value the key takes, when its type is made of choices only (`Literal`, `bool`,
    None: `data.bos` is ``bool | Literal["auto"]``), in the order of the type; else None
    (a union with any other member, `PositiveInt | None`, takes more than a list can say)."""
    errors = [line[2:] for line in lines if line.startswith("- ")] or lines[1:2]  # a union's members, or the one
    expected = [_EXPECTED.match(error) for error in errors]
    if not expected or not all(expected):
        return None
    choices: list[str] = []
    for literal, cls in (m.groups() for m in expected):
        if cls and cls not in _CLASS_CHOICES:
            return None
        found = _CLASS_CHOICES[cls] if cls else [c.strip().strip("'\"") for c in literal.split(",")]
        choices += [c for c in found if c not in choices]
    return choices or None


def _given_value(lines: list[str], message: str) -> str | None:
    """The value given: jsonargparse's "Given value: X" line, or the "Got value: X" after the type."""
    given = _given(lines)
    got = re.search(r"Got value: (.*)$", message.strip())
    return given if given is not None else (got.group(1).strip() if got else None)


def one_line(message: str) -> str:
    """A jsonargparse error as one line: the key, the value given and, for a choice, the
    valid values, instead of the full type dump (`--trainer.precision 8-true`)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    key = re.match(r'Parser key "([^"]+)":\s*(.*)', lines[0]) if lines else None
    if key is None:
        return " ".join(lines)
    nested = re.search(r'^\s*- (Parser key "[^"]+":.*)', message, re.M | re.S)
    if nested:  # a section's config (`--trainer '{...}'`, `--trainer FILE`): the key inside it
        return one_line(nested.group(1))
    choices, given = _choices(lines), _given_value(lines, message)
    if choices and given is not None:  # `data.bos maybe`: true, false and auto are all valid
        return f"{key.group(1)}={given!r} is not valid; valid: {', '.join(choices)}"
    restricted = re.search(r"Not of type \w+: (?:(.+?) )?does not conform to restriction (\S+)", message)
    if restricted:  # PositiveInt, NonNegativeFloat, ... (in a union with None, the value is on its own line)
        from lit_massive.options import restriction_text  # jsonargparse: only once validate parses

        value = restricted.group(1) or _given(lines)
        return f"{key.group(1)}={value}: {restriction_text(restricted.group(0))}"
    if "typing.Literal" not in message and (union := _union_error(key.group(1), message)) is not None:
        return union
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


def moved_option(message: str, moved: dict[str, str]) -> str | None:
    """An unknown ``model.OLD`` option that moved (`moved`: OLD -> its place under model.),
    as one line giving the new spelling, on the command line and in a config file alike."""
    found = re.search(r"unrecognized arguments: --model\.(\w+)|does not accept option 'model\.(\w+)'", message)
    old = found and (found.group(1) or found.group(2))
    if not old or old not in moved:
        return None
    return f"model.{old} is now model.{moved[old]} (options of each analysis are grouped under model.analyses)"


def did_you_mean(message: str, options: Iterable[str]) -> str:
    """`message` with the closest of `options` (`--model.top_k`, ...) named after an option
    that does not exist: `unrecognized arguments: --model.topk 3` on the command line,
    `... does not accept option 'model.topk'` in a config file."""
    options = sorted({o for o in options if o.startswith("--")})
    flag = re.match(r"unrecognized arguments: (--[^\s=]+)", message)
    key = re.search(r"does not accept option '([^']+)'", message)
    if flag:
        close = difflib.get_close_matches(flag.group(1), options, n=1, cutoff=0.7)
        return f"{message} (did you mean {close[0]}?)" if close else message
    if key:
        close = difflib.get_close_matches(key.group(1), [o[2:] for o in options], n=1, cutoff=0.7)
        return f"{message} (did you mean {close[0]}?)" if close else message
    return message


class OneLineArgumentParser(argparse.ArgumentParser):
    """The parser of a plain subcommand (`rank-heads`, `configs`; `prog` is `lit_massive NAME`):
    bad arguments end with one line `NAME: message` (via `InputError`), not a usage block."""

    def error(self, message: str):
        raise InputError(f"{self.prog.rsplit(' ', 1)[-1]}: {message}")
