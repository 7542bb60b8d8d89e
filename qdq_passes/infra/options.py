"""Typed pass options: a frozen dataclass per pass, read from and printed back to pipeline text.

A pass declares ``Options`` as a frozen dataclass deriving from :class:`PassOptions` whose fields
use :func:`option` (a default, a help line and the bounds of the value). Field ``snake_case`` is
spelled ``snake-case`` in pipelines. Supported field types: ``bool``, ``int``, ``float``, ``str``,
``Literal[...]`` (a choice), ``tuple[T, ...]`` or fixed ``tuple[T, U]`` (written ``[a,b]``), and
``T | None`` (written ``none``).

Values are checked when the options are built, so a pipeline is refused when it is parsed, before
any model is read: every float must be finite, every int fit in 64 bits, each number (each item of
a tuple) lie within the field's bounds; ``PassOptions.validate`` adds the checks that relate two
fields. Messages name the option in pipeline spelling.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from typing import Any, Literal, Union

from qdq_passes.infra.errors import OptionError

__all__ = [
    "option", "OptionField", "PassOptions", "NoOptions", "option_fields", "build_options", "format_options",
    "input_paths", "RawValue",
]

#: A value as the pipeline parser hands it over: a token, or a bracketed list of values.
RawValue = Union[str, list["RawValue"]]

_TRUE = {"true", "1", "on", "yes"}
_FALSE = {"false", "0", "off", "no"}
_BARE = re.compile(r"^[A-Za-z0-9_.+\-/:@%]+$")


_INT64 = (-(2**63), 2**63 - 1)


def option(default: Any, help: str, *, at_least: float | None = None, above: float | None = None,
           at_most: float | None = None, below: float | None = None, input_path: bool = False) -> Any:
    """Declare an option field: its default, one line of help and the bounds of its numbers.

    ``at_least``/``at_most`` are inclusive bounds, ``above``/``below`` exclusive ones; for a tuple
    they bound every item. ``input_path``: the value names a file the pass reads (``qdq-opt``
    refuses an output that would overwrite it).
    """
    bounds = {"at_least": at_least, "above": above, "at_most": at_most, "below": below}
    return dataclasses.field(default=default, metadata={
        "help": help, "bounds": {k: v for k, v in bounds.items() if v is not None}, "input_path": input_path})


@dataclasses.dataclass(frozen=True)
class PassOptions:
    """Base of every ``Options`` dataclass: checks each value on construction (see the module doc)."""

    def __post_init__(self) -> None:
        for field in option_fields(type(self)):
            field.check(getattr(self, field.name))
        self.validate()

    def validate(self) -> None:
        """Checks that relate two fields; raise :class:`OptionError` naming the option (``key=``)."""


@dataclasses.dataclass(frozen=True)
class NoOptions(PassOptions):
    """Options of a pass that takes none."""


@dataclasses.dataclass(frozen=True)
class OptionField:
    """One declared option: its pipeline key, Python type, default and help."""

    name: str
    type: Any
    default: Any
    help: str
    bounds: dict[str, float] = dataclasses.field(default_factory=dict)
    input_path: bool = False

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
            raise OptionError(f"{where}: option '{self.key}' expects {self.type_name}, got {_show(raw)} ({exc})",
                              key=self.key) from None

    def format(self, value: Any) -> str:
        """Print a value back in pipeline syntax (the inverse of :meth:`parse`)."""
        return _format(value)

    def check(self, value: Any) -> None:
        """Raise :class:`OptionError` if a number in ``value`` is not finite or out of bounds."""
        for number in _numbers(value):
            reason = _out_of_bounds(number, self.bounds)
            if reason:
                raise OptionError(f"option '{self.key}' {reason}, got {_format(number)}", key=self.key)


def option_fields(options_cls: type) -> list[OptionField]:
    """The declared options of an ``Options`` dataclass, in declaration order."""
    hints = typing.get_type_hints(options_cls)
    fields = []
    for f in dataclasses.fields(options_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        fields.append(OptionField(f.name, hints[f.name], default, f.metadata.get("help", ""),
                                  dict(f.metadata.get("bounds", {})), bool(f.metadata.get("input_path"))))
    return fields


def input_paths(options: Any) -> list[str]:
    """The file paths the options name for reading (fields declared with ``input_path=True``)."""
    return [value for f in option_fields(type(options)) if f.input_path
            for value in [getattr(options, f.name)] if isinstance(value, str) and value]


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
            raise OptionError(f"{where}: unknown option '{key}'{suggestion}", key=key)
        if value is None:
            if field.type is not bool:
                raise OptionError(f"{where}: option '{key}' needs a value ({field.type_name})", key=key)
            value = "true"
        values[field.name] = field.parse(value, where)
    try:
        options = options_cls(**values)
    except OptionError as exc:
        raise OptionError(f"{where}: {exc}", key=exc.key) from None
    if not isinstance(options, PassOptions):  # an out-of-tree Options class: the same value checks
        for field in option_fields(options_cls):
            try:
                field.check(getattr(options, field.name))
            except OptionError as exc:
                raise OptionError(f"{where}: {exc}", key=exc.key) from None
    return options


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
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        return value
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


def _numbers(value: Any) -> list[int | float]:
    """The numbers in an option value (the value itself, or a tuple's items)."""
    items = value if isinstance(value, tuple) else (value,)
    return [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _out_of_bounds(number: int | float, bounds: dict[str, float]) -> str:
    """Why ``number`` is not allowed (empty if it is)."""
    if isinstance(number, float) and not math.isfinite(number):
        return "must be a finite number"
    if isinstance(number, int) and not _INT64[0] <= number <= _INT64[1]:
        return "does not fit in a 64-bit integer"
    checks = (("at_least", number >= bounds.get("at_least", number), "at least"),
              ("above", "above" not in bounds or number > bounds["above"], "greater than"),
              ("at_most", number <= bounds.get("at_most", number), "at most"),
              ("below", "below" not in bounds or number < bounds["below"], "less than"))
    for name, ok, words in checks:
        if not ok:
            return f"must be {words} {_format(bounds[name])}"
    return ""


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
