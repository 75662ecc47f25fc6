"""The example configs that ship inside the package, and `python -m lit_massive configs`.

The repository's `configs/` is a link to `lit_massive/configs/`: one copy of each file,
which users read and edit in the checkout and which every install carries as package data.
A bare name (`prune_top.yaml`, `prune_top`, or `configs/prune_top.yaml` outside the
checkout) given to `--config` resolves to the bundled file; an existing path always wins.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from lit_massive.cli.console import OneLineArgumentParser
from lit_massive.errors import InputError

if TYPE_CHECKING:
    import yaml

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


# what a config is, for a file that is none: said by every refusal below
_A_CONFIG = "a config maps model:, data: and trainer: to their options (`lit_massive configs demo` prints one)"
# top-level keys of a run's results.json that no config has
_RESULTS_KEYS = {"variants", "provenance"}


def check_config_file(path: str) -> None:
    """A config whose YAML does not parse, as one line naming the file and the line (the
    parser's own message names `"<unicode string>"`), and a file that parses but is no
    config (empty, a list, a run's results.json), which the parser only calls "Unexpected
    config". What the keys and values mean is the parser's."""
    import yaml  # PyYAML, light: no lightning or torch

    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return  # not a readable text file: the parser says why
    try:
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = err.problem or err.context or "invalid YAML"
        context = ""
        if err.context and err.problem and err.context_mark is not None:
            context = f" ({err.context} at line {err.context_mark.line + 1}, column {err.context_mark.column + 1})"
        raise InputError(f"config {path}{where}: {problem}{context}") from err
    if len(documents) <= 1:  # several documents: the parser's own error names them
        check_config_shape(path, documents[0] if documents else None)


def check_config_shape(path: str, node: yaml.Node | None) -> None:
    """A config is a mapping of sections: refuse an empty file, a list or a scalar, and a
    run's results.json (its keys would be refused one by one), saying what to give instead."""
    import yaml

    if node is None:
        raise InputError(f"config {path} is empty; {_A_CONFIG}")
    if not isinstance(node, yaml.MappingNode):
        kind = "a list" if isinstance(node, yaml.SequenceNode) else f"the value {node.value!r}"
        raise InputError(f"config {path} holds {kind}, not a mapping; {_A_CONFIG}")
    keys = {key.value for key, _ in node.value if isinstance(key, yaml.ScalarNode)}
    if _RESULTS_KEYS <= keys:
        saved = Path(path).expanduser().parent / "config.yaml"
        rerun = f"--config {saved}" if saved.is_file() else "that run's config.yaml"
        raise InputError(
            f"config {path} is a run's results.json, not a config: to rerun that run give {rerun}; "
            f"to read it, `lit_massive rank-heads {path}` or `lit_massive compare RUN ...`"
        )


def resolve_config_args(argv: list[str]) -> list[str]:
    """`argv` with the value of every `--config X`, `--config=X` and `-c X` resolved, each
    file checked (YAML syntax; a mapping, not a results.json)."""
    out = list(argv)
    for i in range(len(out)):
        found = config_flag_at(out, i)
        if found is None or found[1] is None:
            continue
        flag, value, span = found
        resolved = resolve_config(value)
        check_config_file(resolved)
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
