"""Command-line flags generated from a pydantic model's fields: `--some-field` for `some_field`, its type, choices,
default and help taken from the field's declaration, so a setting is declared once (lighthouse/engine/config.py,
server/settings.py) and every command follows.

Each flag defaults to None, so that only the flags given override the model's defaults (or, for the server, its
environment variables). A flag's string goes through the field's own before-validators first, as an environment
value does: `--log-level DEBUG` and `--cors-origins a,b` parse as their variables do. Values are checked by the model
itself when it is built, not here, so a bad value reads the same from a flag and from the environment.
"""

from __future__ import annotations

import argparse
import types
from typing import Any, Callable, Iterable, Literal, NamedTuple, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

__all__ = ["Flag", "flags", "add_flags", "given", "flag_name", "env_name", "parse_bool", "choices", "default_text"]


class Flag(NamedTuple):
    flag: str  # --some-field
    type: Callable[[str], Any]  # the string's conversion (the model validates the result)
    help: str  # the field's description, its default and, for settings read from the environment, the variable


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value in ("true", "1", "yes", "on")


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_name(field: str, env_prefix: str) -> str:
    return f"{env_prefix}{field.upper()}"


def _bare(annotation: Any) -> Any:
    """`int | None` -> int; anything else as it is."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def choices(info: FieldInfo) -> tuple | None:
    """The values a Literal field takes, else None."""
    typ = _bare(info.annotation)
    return get_args(typ) if get_origin(typ) is Literal else None


def _converter(info: FieldInfo) -> Callable[[str], Any]:
    typ = _bare(info.annotation)
    if typ is bool:
        return parse_bool
    allowed = choices(info)
    base = type(allowed[0]) if allowed else typ if typ in (int, float) else str
    before = [m.func for m in info.metadata if isinstance(m, BeforeValidator)]
    if not before:
        return base

    def convert(text: str) -> Any:
        value = text
        for func in before:
            value = func(value)
        return base(value) if isinstance(value, str) else value

    convert.__name__ = base.__name__  # argparse names it in "invalid int value"
    return convert


def default_text(info: FieldInfo) -> str | None:
    """The default as a user would type it (None: no default worth printing)."""
    default = info.default
    if default is PydanticUndefined and info.default_factory is not None:
        default = info.default_factory()
    if default is None or default is PydanticUndefined or default == []:
        return None
    if isinstance(default, bool):
        return str(default).lower()
    return f"{default:g}" if isinstance(default, float) else str(default)


def flags(model: type[BaseModel], env_prefix: str | None = None) -> list[Flag]:
    """One Flag per field of `model`, in declaration order."""
    out = []
    for name, info in model.model_fields.items():
        text = info.description or ""
        default = default_text(info)
        if default is not None:
            text += f" (default: {default})"
        if env_prefix is not None:
            text += f" [env {env_name(name, env_prefix)}]"
        out.append(Flag(flag_name(name), _converter(info), text.strip()))
    return out


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, model: type[BaseModel],
              env_prefix: str | None = None, fields: Iterable[str] | None = None) -> None:
    """Add a flag for each field of `model` (or each of `fields`) to `parser`. A bool flag alone means true:
    `--enforce-eager`, and `--enforce-eager false` also parses."""
    chosen = None if fields is None else set(fields)
    for (name, info), flag in zip(model.model_fields.items(), flags(model, env_prefix)):
        if chosen is not None and name not in chosen:
            continue
        help_text = flag.help.replace("%", "%%")  # argparse formats help with %
        if flag.type is parse_bool:
            parser.add_argument(flag.flag, type=parse_bool, nargs="?", const=True, default=None, metavar="BOOL",
                                help=help_text)
        else:
            parser.add_argument(flag.flag, type=flag.type, choices=choices(info), default=None, help=help_text)


def given(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The fields of `model` whose flags were given, by field name."""
    return {name: value for name in model.model_fields if (value := getattr(args, name, None)) is not None}
