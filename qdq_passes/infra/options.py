"""Typed pass options: a frozen dataclass per pass, read from and printed back to pipeline text.

A pass declares ``Options`` as a frozen dataclass whose fields use :func:`option` (a default and a
help line). Field ``snake_case`` is spelled ``snake-case`` in pipelines. Supported field types:
``bool``, ``int``, ``float``, ``str``, ``Literal[...]`` (a choice), ``tuple[T, ...]`` or fixed
``tuple[T, U]`` (written ``[a,b]``), and ``T | None`` (written ``none``).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Literal, Union

from qdq_passes.infra.errors import OptionError

__all__ = ["option", "OptionField", "NoOptions", "option_fields", "build_options", "format_options", "RawValue"]

#: A value as the pipeline parser hands it over: a token, or a bracketed list of values.
RawValue = Union[str, list["RawValue"]]

_TRUE = {"true", "1", "on", "yes"}
_FALSE = {"false", "0", "off", "no"}
_BARE = re.compile(r"^[A-Za-z0-9_.+\-/:@%]+$")


def option(default: Any, help: str) -> Any:
    """Declare an option field with its default and one line of help."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Options of a pass that takes none."""


@dataclasses.dataclass(frozen=True)
class OptionField:
    """One declared option: its pipeline key, Python type, default and help."""

    name: str
    type: Any
    default: Any
    help: str

    @property
    def key(self) -> str:
        """The kebab-case spelling used in pipeline text."""
        return self.name.replace("_", "-")

    @property
    def type_name(self) -> str:
        """A short human-readable type, for ``--list-passes``."""
        return _type_name(self.type)

    def parse(self, raw: RawValue, where: str) -> Any:
        """Convert a raw pipeline value to this option's type, or raise :class:`OptionError`."""
        try:
            return _convert(raw, self.type)
        except ValueError as exc:
            raise OptionError(f"{where}: option '{self.key}' expects {self.type_name}, got {_show(raw)} ({exc})") from None

    def format(self, value: Any) -> str:
        """Print a value back in pipeline syntax (the inverse of :meth:`parse`)."""
        return _format(value)


def option_fields(options_cls: type) -> list[OptionField]:
    """The declared options of an ``Options`` dataclass, in declaration order."""
    hints = typing.get_type_hints(options_cls)
    fields = []
    for f in dataclasses.fields(options_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        fields.append(OptionField(f.name, hints[f.name], default, f.metadata.get("help", "")))
    return fields


def build_options(options_cls: type, raw: dict[str, RawValue | None], where: str) -> Any:
    """Build an ``Options`` instance from raw ``key -> value`` pairs (value None: a bare key, i.e. true)."""
    by_key = {f.key: f for f in option_fields(options_cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        field = by_key.get(key) or by_key.get(key.replace("_", "-"))
        if field is None:
            hint = difflib.get_close_matches(key, list(by_key), n=1)
            known = ", ".join(by_key) or "none"
            suggestion = f"; did you mean '{hint[0]}'?" if hint else f" (options: {known})"
            raise OptionError(f"{where}: unknown option '{key}'{suggestion}")
        if value is None:
            if field.type is not bool:
                raise OptionError(f"{where}: option '{key}' needs a value ({field.type_name})")
            value = "true"
        values[field.name] = field.parse(value, where)
    return options_cls(**values)


def format_options(options: Any) -> str:
    """Every option spelled out, ``key=value`` separated by spaces (empty for no options)."""
    return " ".join(f"{f.key}={f.format(getattr(options, f.name))}" for f in option_fields(type(options)))


def _convert(raw: RawValue, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if isinstance(raw, str) and raw.lower() in ("none", "null") and len(inner) < len(args):
            return None
        errors = []
        for candidate in inner:
            try:
                return _convert(raw, candidate)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if origin is tuple:
        items = raw if isinstance(raw, list) else [raw]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(item, args[0]) for item in items)
        if len(items) != len(args):
            raise ValueError(f"expected {len(args)} values")
        return tuple(_convert(item, a) for item, a in zip(items, args))
    if isinstance(raw, list):
        raise ValueError("a list is not allowed here")
    if origin is Literal:
        if raw not in args:
            hint = difflib.get_close_matches(raw, [str(a) for a in args], n=1)
            raise ValueError("choose one of " + "|".join(map(str, args)) + (f"; did you mean '{hint[0]}'?" if hint else ""))
        return raw
    if typ is bool:
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError("not a boolean")
    if typ is int:
        return int(raw, 0) if raw.lower().startswith(("0x", "-0x")) else int(raw)
    if typ is float:
        return float(raw)
    if typ is str:
        return raw
    raise ValueError(f"unsupported option type {typ!r}")


def _format(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(_format(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    if text and _BARE.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _type_name(typ: Any) -> str:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) if a is not type(None) else "none" for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"[{_type_name(args[0])},...]"
        return "[" + ",".join(_type_name(a) for a in args) + "]"
    if origin is Literal:
        return "|".join(map(str, args))
    return getattr(typ, "__name__", str(typ))


def _show(raw: RawValue) -> str:
    return f"'{raw}'" if isinstance(raw, str) else _format(raw)
