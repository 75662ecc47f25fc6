"""MkDocs hook (`hooks:` in mkdocs.yml): the reference pages, generated from the code at build
time so they cannot go stale. They exist only in the built site:

- `reference/options.md`: every `model.*` option (`MassiveActivations.__init__`) and `data.*`
  option (`WindowsDataModule.__init__`): name, type, default and the docstring's Args text;
  then the `model.variants` forms, `model.sweep` and `model.analyses.feature_view`;
- `reference/results-json.md`: the TypedDicts of `lit_massive.results.schema` (key, type, the
  source's comment) and every registered analysis (`lit_massive.analyses.ANALYSES`): its
  option, its keys of a variant entry and of each `layers` row, its docstring;
- `reference/configs.md`: the bundled configs, each with its description and its YAML.

tests/test_docs.py calls the generators directly.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
import typing
from collections.abc import Callable
from typing import Any, NamedTuple

GENERATED = {
    "reference/options.md": "options_reference",
    "reference/results-json.md": "results_reference",
    "reference/configs.md": "configs_reference",
}
# a comment's tool directives (noqa, fmt, ...) are no documentation
LINT = re.compile(r"(^|#)\s*(noqa|type: ?ignore|fmt: ?\w+|isort: ?\w+|pragma: ?[\w ]+)\b.*$")
RESTRICTED = {  # jsonargparse's restricted types, as words
    "PositiveInt": "an integer > 0",
    "NonNegativeInt": "an integer >= 0",
    "NonNegativeFloat": "a number >= 0",
}


class Field(NamedTuple):
    """One option, key or field: its name, its type as the source writes it, its default
    (already shown as YAML, or "" for none) and its documentation."""

    name: str
    type: str
    default: str
    doc: str


# ---------------------------------------------------------------------------------------
# reading the code


def yaml_value(value: Any) -> str:
    """A default as a config writes it: null, true, 3, "text", [1, 2]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"' if value == "" or any(c in value for c in ":#{}[],") else value
    if isinstance(value, tuple | list):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    return repr(value)


def _markdown(text: str) -> str:
    """Docstring text as Markdown: RST's ``code`` becomes `code`."""
    return text.replace("``", "`")


def docstring_args(function: Callable) -> dict[str, str]:
    """The Args section of a Google-style docstring: name -> its text on one line."""
    doc = inspect.getdoc(function) or ""
    args: dict[str, str] = {}
    lines = doc.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Args:")
    except StopIteration:
        return args
    name = None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:  # the next section
            break
        match = re.match(r"\s+(\w+):\s*(.*)", line)
        if match and indent <= 4:
            name = match.group(1)
            args[name] = match.group(2)
        elif name is not None:
            args[name] += " " + line.strip()
    return {key: _markdown(value.strip()) for key, value in args.items()}


def init_options(cls: type) -> list[Field]:
    """Every parameter of `cls.__init__`: name, annotation as written, default, Args text."""
    signature = inspect.signature(cls.__init__)
    docs = docstring_args(cls.__init__)
    fields = []
    for name, parameter in signature.parameters.items():
        if name == "self":
            continue
        annotation = parameter.annotation
        shown = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
        default = "" if parameter.default is inspect.Parameter.empty else yaml_value(parameter.default)
        fields.append(Field(name, shown, default, docs.get(name, "")))
    return fields


def _comments(source: str) -> dict[int, str]:
    """Line number (1-based) -> the comment on that line, from the tokens (a `#` in a string is no comment)."""
    out = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            out[token.start[0]] = LINT.sub("", token.string.lstrip("#")).strip()
    return out


def class_fields(cls: type) -> list[Field]:
    """The annotated fields of a TypedDict or dataclass in source order: type as written,
    default (dataclasses), and the comment on the field's line, after the comment lines
    right above it. A class without source (a functional TypedDict) gives its annotations."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        hints = getattr(cls, "__annotations__", {})
        return [Field(k, v if isinstance(v, str) else inspect.formatannotation(v), "", "") for k, v in hints.items()]
    comments = _comments(source)
    lines = source.splitlines()
    (node,) = ast.parse(source).body
    assert isinstance(node, ast.ClassDef)
    defaults = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    fields = []
    for statement in node.body:
        if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
            continue
        name = statement.target.id
        above = []
        line = statement.lineno - 1  # 1-based line above
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            above.insert(0, comments.get(line, ""))
            line -= 1
        own = comments.get(statement.end_lineno or statement.lineno, "")
        doc = "; ".join(part for part in (" ".join(above), own) if part)
        default = ""
        if name in defaults:
            field = defaults[name]
            if field.default is not dataclasses.MISSING:
                default = yaml_value(field.default)
            elif field.default_factory is not dataclasses.MISSING:
                default = yaml_value(field.default_factory())
        fields.append(Field(name, ast.get_source_segment(source, statement.annotation) or "", default, doc))
    return fields


def schema_typeddicts() -> dict[str, type]:
    """Every TypedDict defined in `lit_massive.results.schema`, in source order."""
    from lit_massive.results import schema

    found = {
        name: obj
        for name, obj in vars(schema).items()
        if typing.is_typeddict(obj) and getattr(obj, "__module__", None) == schema.__name__
    }
    return dict(sorted(found.items(), key=lambda item: inspect.getsourcelines(item[1])[1]))


# ---------------------------------------------------------------------------------------
# Markdown


def _cell(text: str) -> str:
    """Text for a table cell: a `|` outside code spans would end the cell."""
    parts = text.split("`")
    return "`".join(part if i % 2 else part.replace("|", "\\|") for i, part in enumerate(parts))


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def _type_text(annotation: str) -> str:
    words = [word for restricted, word in RESTRICTED.items() if re.search(rf"\b{restricted}\b", annotation)]
    return _code(annotation) + (f" ({', '.join(words)})" if words else "")


def _field_table(fields: list[Field], first: str = "key", defaults: bool = False) -> list[str]:
    head = f"| {first} | type |" + (" default |" if defaults else "") + " notes |"
    rows = [head, "|---|---|" + ("---|" if defaults else "") + "---|"]
    for f in fields:
        default = f" {_code(f.default)} |" if defaults else ""
        rows.append(f"| `{f.name}` | {_cell(_code(f.type))} |{default} {_cell(f.doc)} |")
    return rows


def _option_section(prefix: str, fields: list[Field]) -> list[str]:
    out = ["| option | type | default |", "|---|---|---|"]
    out += [
        f"| [`{prefix}.{f.name}`](#{prefix}{f.name}) | {_cell(_code(f.type))} | {_code(f.default)} |" for f in fields
    ]
    for f in fields:
        default = f", default `{f.default}`" if f.default else ", no default"
        out += ["", f"### `{prefix}.{f.name}`", "", f"Type {_type_text(f.type)}{default}.", ""]
        out.append(f.doc or "(not documented in the code)")
    return out


def options_reference() -> str:
    """The option reference page: `model.*`, `data.*`, the variant forms, sweep, feature view and tasks."""
    from lit_massive.analyses import registry
    from lit_massive.data.datamodule import WindowsDataModule
    from lit_massive.module import MassiveActivations
    from lit_massive.variants import specs

    out = [
        "# Options reference",
        "",
        "Generated from the code when the site is built: the `model.*` options are the parameters of",
        "`lit_massive.module.MassiveActivations.__init__` and the `data.*` options those of",
        "`lit_massive.data.datamodule.WindowsDataModule.__init__`, with the types, defaults and",
        "docstrings written there. `python -m lit_massive validate --help` prints the same options",
        "with the Trainer's (`trainer.*`); a config file or a dotted flag (`--data.num_sequences 20`) sets them.",
        "",
        "## model.*",
        "",
        inspect.getdoc(MassiveActivations) or "",
        "",
        *_option_section("model", init_options(MassiveActivations)),
        "",
        "## data.*",
        "",
        inspect.getdoc(WindowsDataModule) or "",
        "Options described as *set by the CLI* follow the `model.*` option of that name",
        "(`link_arguments`): a config sets them there.",
        "",
        *_option_section("data", init_options(WindowsDataModule)),
        "",
        "## The forms of model.variants",
        "",
        "`model.variants` maps a variant's name to one of these forms (the members of",
        "`lit_massive.variants.specs.VariantSpec`). The unpruned `baseline` is always measured too.",
        "Each form, with an example from the code's own error messages:",
    ]
    for form in typing.get_args(specs.VariantSpec):
        if not isinstance(form, type) or typing.get_origin(form) is not None:
            out += ["", "### A list of heads", "", "`[[layer, head], ...]`: the heads to prune (0-based)."]
            continue
        fields = class_fields(form)
        example = specs.FORM_EXAMPLES.get(fields[0].name, "")
        out += ["", f"### {form.__name__}", "", _markdown(inspect.getdoc(form) or "")]
        if example:
            out += ["", f"Example: `{example}`"]
        out += ["", *_field_table(fields, defaults=True)]
        for f in fields:
            nested = getattr(specs, f.type, None)
            if nested is not None and typing.is_typeddict(nested):
                out += ["", f"`{f.name}` ({f.type}) takes:", "", *_field_table(class_fields(nested))]
    doc = _markdown(inspect.getdoc(specs.Sweep) or "")
    out += ["", "## model.sweep", "", f"`Sweep`: {doc}", "", *_field_table(class_fields(specs.Sweep), defaults=True)]
    out += [
        "",
        "## model.analyses.*",
        "",
        "Each analysis declares its options in its own file (its `Options` dataclass); a config",
        "groups them per analysis, e.g. `model.analyses.head_scores.enabled: true` or",
        "`--model.analyses.sink_rate.epsilon 0.2`. A group that is null or whose `enabled` is",
        "false is off; an analysis runs only when the groups it requires are on too.",
    ]
    for group, cls in registry.option_groups().items():
        options = cls.Options
        docs = docstring_args(options)
        fields = [Field(f.name, f.type, f.default, docs.get(f.name) or f.doc) for f in class_fields(options)]
        summary = _markdown((inspect.getdoc(options) or "").split("\n\n")[0])
        requires = f" On only with {', '.join(f'`{r}`' for r in cls.requires)}." if cls.requires else ""
        null = " Null (the default) turns it off." if cls.optional else ""
        out += ["", f"### model.analyses.{group}", "", f"{summary}{requires}{null}", ""]
        out += _field_table(fields, defaults=True)
    return "\n".join(out) + "\n"


def results_reference() -> str:
    """The results.json reference page: the schema's TypedDicts and the registered analyses."""
    import lit_massive.module  # noqa: F401  (registers the analyses kept outside lit_massive.analyses: tasks)
    from lit_massive.analyses import ANALYSES, registry
    from lit_massive.results import schema

    out = [
        "# results.json reference",
        "",
        "Generated from the code when the site is built, from the TypedDicts of",
        "`lit_massive.results.schema` and the analyses registered in `lit_massive.analyses.ANALYSES`.",
        "[Results](../results.md) describes the run directory around it.",
        "",
        _markdown(inspect.getdoc(schema) or ""),
        "",
        "## Keys by analysis",
        "",
        "A variant's entry holds, in this order, what the variant is (`pruned_heads`, `edit`), then",
        "every registered analysis's keys (null when the analysis is off), then, except on the",
        "baseline, `change_vs_baseline`. An analysis with layer keys adds them to every `layers` row.",
        "",
        "| analysis | turned on by | keys of a variant entry | keys of each `layers` row |",
        "|---|---|---|---|",
    ]
    for name, cls in ANALYSES.items():
        groups = [g for g in (cls.options_group(), *cls.requires) if g in registry.option_groups()]
        option = ", ".join(f"`model.analyses.{g}`" for g in dict.fromkeys(groups)) or "always on"
        keys = ", ".join(f"`{k}`" for k in cls.keys) or "-"
        layer_keys = ", ".join(f"`{k}`" for k in cls.layer_keys) or "-"
        out.append(f"| `{name}` | {option} | {keys} | {layer_keys} |")
    for name, cls in ANALYSES.items():
        doc = _markdown(inspect.getdoc(cls) or "")
        out += ["", f"### {name}", "", f"`{cls.__module__}.{cls.__name__}`: {doc}"]
    out += ["", "## Typed structures", ""]
    for name, cls in schema_typeddicts().items():
        doc = _markdown(inspect.getdoc(cls) or "")
        doc = "" if doc == (inspect.getdoc(dict) or "") else doc  # a TypedDict without its own docstring
        out += [f"### {name}", ""]
        if doc:
            out += [doc, ""]
        out += [*_field_table(class_fields(cls)), ""]
    return "\n".join(out)


def configs_reference() -> str:
    """The bundled configs page: each config's name, description and YAML."""
    from lit_massive.cli.configs import bundled_configs, describe_config

    configs = bundled_configs()
    out = [
        "# Bundled configs",
        "",
        "Generated from the package's `lit_massive/configs/` when the site is built. `--config NAME`",
        "runs one from any directory; `python -m lit_massive configs NAME` prints it to copy and edit.",
        "",
        "| config | what it runs |",
        "|---|---|",
        *(f"| [`{name}`](#{name}) | {_cell(describe_config(path))} |" for name, path in configs.items()),
    ]
    for name, path in configs.items():
        out += ["", f"## {name}", "", "```yaml", path.read_text(encoding="utf-8").rstrip("\n"), "```"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------
# MkDocs


def on_files(files, config):
    """Add the generated pages to the site's files (nothing is written into docs/)."""
    from mkdocs.structure.files import File

    for path, generator in GENERATED.items():
        files.append(File.generated(config, path, content=globals()[generator]()))
    return files
