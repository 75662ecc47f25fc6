"""The example configs that ship inside the package, and `python -m lit_massive configs`.

The repository's `configs/` is a link to `lit_massive/configs/`: one copy of each file,
which users read and edit in the checkout and which every install carries as package data.
A bare name (`prune_top.yaml`, `prune_top`, or `configs/prune_top.yaml` outside the
checkout) given to `--config` resolves to the bundled file; an existing path always wins.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from lit_massive.cli.console import OneLineArgumentParser
from lit_massive.errors import InputError

_SUFFIXES = (".yaml", ".yml")
_CONFIG_FLAG, _CONFIG_SHORT = "--config", "-c"  # `-c X`, `--config X`, `--config=X`


def bundled_configs() -> dict[str, Path]:
    """Name (file stem) -> path of every config shipped with the package, sorted by name."""
    directory = Path(str(files("lit_massive") / "configs"))
    paths = [p for p in directory.iterdir() if p.suffix in _SUFFIXES] if directory.is_dir() else []
    return {p.stem: p for p in sorted(paths)}


def describe_config(path: Path) -> str:
    """The config's one-line description: its first comment line."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and line.lstrip("#").strip():
            return line.lstrip("#").strip()
        if line.strip() and not line.startswith("#"):
            break
    return ""


def _bundled_name(value: str) -> str | None:
    """`prune_top`, `prune_top.yaml` or `configs/prune_top.yaml` -> `prune_top`; else None."""
    head, _, tail = value.rpartition("/")
    if head not in ("", "configs") or not tail:
        return None
    path = Path(tail)
    if path.suffix in _SUFFIXES:
        return path.stem
    return path.name if not path.suffix else None


def _unknown(value: str, what: str) -> InputError:
    names = ", ".join(bundled_configs()) or "none"
    return InputError(f"{what} {value!r} is neither an existing file nor a bundled config (bundled: {names})")


def resolve_config(value: str) -> str:
    """The config file `--config value` means: an existing path as given, else the bundled
    config of that name; raise InputError naming the bundled configs otherwise."""
    if Path(value).expanduser().exists():
        return value
    name = _bundled_name(value)
    bundled = bundled_configs()
    if name in bundled:
        return str(bundled[name])
    raise _unknown(value, "config")


def config_flag_at(argv: list[str], i: int) -> tuple[str, str | None, int] | None:
    """The config flag at `argv[i]` (`-c X`, `--config X` or `--config=X`) as (flag, value,
    arguments it spans); value None for a flag with nothing after it; None for any other argument."""
    arg = argv[i]
    if arg in (_CONFIG_FLAG, _CONFIG_SHORT):
        return (arg, argv[i + 1], 2) if i + 1 < len(argv) else (arg, None, 1)
    if arg.startswith(_CONFIG_FLAG + "="):
        return _CONFIG_FLAG, arg.split("=", 1)[1], 1
    return None


def check_yaml_syntax(path: str) -> None:
    """A config whose YAML does not parse, as one line naming the file and the line (the
    parser's own message names `"<unicode string>"`). Only the syntax is checked here: what
    the keys and values mean is the parser's."""
    import yaml  # PyYAML, light: no lightning or torch

    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return  # not a readable text file: the parser says why
    try:
        for _ in yaml.compose_all(text, Loader=yaml.SafeLoader):
            pass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = err.problem or err.context or "invalid YAML"
        context = ""
        if err.context and err.problem and err.context_mark is not None:
            context = f" ({err.context} at line {err.context_mark.line + 1}, column {err.context_mark.column + 1})"
        raise InputError(f"config {path}{where}: {problem}{context}") from err


def resolve_config_args(argv: list[str]) -> list[str]:
    """`argv` with the value of every `--config X`, `--config=X` and `-c X` resolved, each
    file's YAML syntax checked."""
    out = list(argv)
    for i in range(len(out)):
        found = config_flag_at(out, i)
        if found is None or found[1] is None:
            continue
        flag, value, span = found
        resolved = resolve_config(value)
        check_yaml_syntax(resolved)
        out[i : i + span] = [flag, resolved] if span == 2 else [f"{flag}={resolved}"]
    return out


def main(argv: list[str]) -> None:
    """`configs`: list the bundled configs; `configs NAME`: print one, to copy and edit."""
    parser = OneLineArgumentParser(
        prog="lit_massive configs",
        description="List the example configs shipped with lit_massive, or print one of them "
        "(`python -m lit_massive configs prune_top > my.yaml`). Any of them runs by name: "
        "`python -m lit_massive validate --config prune_top.yaml`.",
    )
    parser.add_argument("name", nargs="?", help="a bundled config to print (with or without .yaml)")
    args = parser.parse_args(argv)
    bundled = bundled_configs()
    if args.name is None:
        width = max(map(len, bundled), default=0)
        for name, path in bundled.items():
            print(f"{name:<{width}}  {describe_config(path)}")
        return
    name = _bundled_name(args.name)
    if name not in bundled:
        raise _unknown(args.name, "bundled config")
    print(bundled[name].read_text(encoding="utf-8"), end="")
