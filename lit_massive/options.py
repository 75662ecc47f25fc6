"""Types that check option values (jsonargparse's restricted types and `Literal`), and the
same check for Python callers, who pass values LightningCLI never saw."""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveInt

from lit_massive.errors import InputError

__all__ = ["NonNegativeFloat", "NonNegativeInt", "PositiveInt", "check_options", "restriction_text"]

_RESTRICTIONS = {"v>0": "must be > 0", "v>=0": "must be >= 0"}


def restriction_text(message: str) -> str:
    """jsonargparse's "does not conform to restriction v>0" as words."""
    for restriction, text in _RESTRICTIONS.items():
        if f"restriction {restriction}" in message:
            return text
    return message


def _check(name: str, hint: Any, value: Any) -> None:
    if typing.get_origin(hint) in (Union, getattr(__import__("types"), "UnionType", Union)):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return
        hint = next((a for a in args if a is not type(None)), hint)
    if typing.get_origin(hint) is Literal:
        if value not in typing.get_args(hint):
            valid = ", ".join(str(v) for v in typing.get_args(hint))
            raise InputError(f"{name}={value!r} is not valid; valid: {valid}")
    elif hint in (PositiveInt, NonNegativeInt, NonNegativeFloat):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{name}={value!r}: expected a number")
        try:
            hint(value)
        except ValueError as err:
            raise InputError(f"{name}={value!r}: {restriction_text(str(err))}") from err


def check_options(fn: Callable, values: Mapping[str, Any]) -> None:
    """Check `values` (a call's arguments, e.g. `locals()`) against the restricted and
    `Literal` types of `fn`'s signature; an InputError names the first bad one."""
    hints = typing.get_type_hints(fn)
    for name, hint in hints.items():
        if name in values and name != "return":
            _check(name, hint, values[name])


def plain(value: Any) -> Any:
    """A restricted number as a plain int or float (for YAML and JSON)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value
