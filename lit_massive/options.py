"""Types that check option values (jsonargparse's restricted types and `Literal`), and the
same check for Python callers, who pass values LightningCLI never saw."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveInt

from lit_massive.errors import InputError

__all__ = ["NonNegativeFloat", "NonNegativeInt", "PositiveInt", "check_options", "restriction_text"]

_RESTRICTIONS = {"v>0": "must be > 0", "v>=0": "must be >= 0"}
_RESTRICTED = (PositiveInt, NonNegativeInt, NonNegativeFloat)
_UNIONS = (Union, types.UnionType)


def restriction_text(message: str) -> str:
    """jsonargparse's "does not conform to restriction v>0" as words."""
    for restriction, text in _RESTRICTIONS.items():
        if f"restriction {restriction}" in message:
            return text
    return message


def _restriction_problem(hint: Any, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "expected a number"
    try:
        hint(value)
    except ValueError as err:
        return restriction_text(str(err))
    return None


def _choice_text(choice: Any) -> str:
    return str(choice).lower() if isinstance(choice, bool) else str(choice)


def _check(name: str, hint: Any, value: Any) -> None:
    """A union (``PositiveInt | None``, ``bool | Literal["auto"]``) passes when one member
    takes the value; `bool` is checked only as such a member (the choices true, false).
    A hint with a member not checked here (``str``, a class) may take anything: skipped."""
    members = typing.get_args(hint) if typing.get_origin(hint) in _UNIONS else (hint,)
    if value is None and type(None) in members:
        return
    members = [m for m in members if m is not type(None)]
    if not members or not all(
        m in _RESTRICTED or typing.get_origin(m) is Literal or (m is bool and len(members) > 1) for m in members
    ):
        return
    literals = [c for m in members if typing.get_origin(m) is Literal for c in typing.get_args(m)]
    if (bool in members and isinstance(value, bool)) or value in literals:
        return
    choices = ([True, False] if bool in members else []) + literals
    for restricted in (m for m in members if m in _RESTRICTED):
        problem = _restriction_problem(restricted, value)
        if problem is None:
            return
        if not choices:
            raise InputError(f"{name}={value!r}: {problem}")
    valid = ", ".join(_choice_text(c) for c in choices)
    raise InputError(f"{name}={value!r} is not valid; valid: {valid}")


def check_options(fn: Callable, values: Mapping[str, Any], prefix: str = "") -> None:
    """Check `values` (a call's arguments, e.g. `locals()`) against the restricted and
    `Literal` types of `fn`'s signature; an InputError names the first bad one (as
    `prefix` + its name)."""
    hints = typing.get_type_hints(fn)
    for name, hint in hints.items():
        if name in values and name != "return":
            _check(prefix + name, hint, values[name])
