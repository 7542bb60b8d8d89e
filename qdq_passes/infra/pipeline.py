"""Pipeline text, after MLIR: ``pass{key=value key2=[a,b]},other-pass``.

Grammar (whitespace allowed between tokens)::

    pipeline := element (',' element)*
    element  := NAME ('{' (option)* '}')?
    option   := KEY ('=' value)?            a bare KEY sets a boolean option to true
    value    := '[' (value (',' value)*)? ']' | '"' chars '"' | bare-token

``str(Pipeline)`` prints the canonical form, every option spelled out; it parses back to an
equal pipeline. Errors point at the column with a caret.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from qdq_passes.infra.errors import OptionError, PipelineSyntaxError, UnknownPassError
from qdq_passes.infra.options import RawValue, build_options, option_fields
from qdq_passes.infra.pass_base import QdqPass
from qdq_passes.infra.registry import get_pass

__all__ = ["Pipeline", "parse_pipeline"]

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_BARE_STOP = set(" \t\r\n,{}[]=\"")


class Pipeline:
    """An ordered list of configured passes; ``str()`` is its canonical pipeline text."""

    def __init__(self, passes: Iterable[QdqPass] = ()) -> None:
        self.passes: list[QdqPass] = list(passes)

    def __iter__(self) -> Iterator[QdqPass]:
        return iter(self.passes)

    def __len__(self) -> int:
        return len(self.passes)

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.passes)

    def __repr__(self) -> str:
        return f"Pipeline({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


def parse_pipeline(text: str, *, defaults: dict[str, RawValue] | None = None) -> Pipeline:
    """Parse pipeline text into configured passes; raise a caret-annotated error on bad text.

    ``defaults`` maps option keys to values applied to every pass that declares that option and
    whose text does not set it (how ``qdq-opt --calib PATH`` reaches the passes that read data).
    """
    return _Parser(text, defaults or {}).parse()


class _Parser:
    def __init__(self, text: str, defaults: dict[str, RawValue]) -> None:
        self.text = text
        self.pos = 0
        self.defaults = defaults

    def error(self, message: str, column: int | None = None) -> PipelineSyntaxError:
        return PipelineSyntaxError(message, self.text, self.pos if column is None else column)

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def parse(self) -> Pipeline:
        self.skip_ws()
        if not self.peek():
            raise self.error("empty pipeline: expected a pass name")
        passes = [self.element()]
        self.skip_ws()
        while self.peek() == ",":
            self.pos += 1
            self.skip_ws()
            passes.append(self.element())
            self.skip_ws()
        if self.peek():
            raise self.error(f"expected ',' or the end of the pipeline, found '{self.peek()}'")
        return Pipeline(passes)

    def name(self, what: str) -> tuple[str, int]:
        start = self.pos
        while self.peek() and self.peek() in _NAME_CHARS:
            self.pos += 1
        if self.pos == start:
            found = f"'{self.peek()}'" if self.peek() else "the end of the pipeline"
            raise self.error(f"expected {what}, found {found}")
        return self.text[start : self.pos], start

    def element(self) -> QdqPass:
        name, start = self.name("a pass name")
        try:
            cls = get_pass(name)
        except UnknownPassError as exc:
            raise UnknownPassError(_with_caret(str(exc), self.text, start)) from None
        self.skip_ws()
        raw: dict[str, RawValue | None] = {}
        columns: dict[str, int] = {}
        if self.peek() == "{":
            self.pos += 1
            self.skip_ws()
            while self.peek() != "}":
                if not self.peek():
                    raise self.error(f"unterminated options of '{name}': expected '}}'")
                key, key_col = self.name("an option name or '}'")
                if key in raw:
                    raise self.error(f"option '{key}' of '{name}' given twice", key_col)
                self.skip_ws()
                value: RawValue | None = None
                if self.peek() == "=":
                    self.pos += 1
                    self.skip_ws()
                    value = self.value()
                    self.skip_ws()
                raw[key] = value
                columns[key.replace("_", "-")] = key_col
                if self.peek() == ",":
                    raise self.error("options are separated by spaces, not commas")
            self.pos += 1
        declared = {f.key for f in option_fields(cls.Options)}
        for key, value in self.defaults.items():
            if key in declared and key not in raw:
                raw[key] = value
        try:
            options = build_options(cls.Options, raw, where=name)
        except OptionError as exc:
            column = columns.get(exc.key or "", start)
            raise OptionError(_with_caret(str(exc), self.text, column), key=exc.key) from None
        return cls(options)

    def value(self) -> RawValue:
        ch = self.peek()
        if ch == "[":
            self.pos += 1
            items: list[RawValue] = []
            self.skip_ws()
            if self.peek() == "]":
                self.pos += 1
                return items
            while True:
                items.append(self.value())
                self.skip_ws()
                if self.peek() == ",":
                    self.pos += 1
                    self.skip_ws()
                elif self.peek() == "]":
                    self.pos += 1
                    return items
                else:
                    raise self.error("expected ',' or ']' in a list value")
        if ch == '"':
            start = self.pos
            self.pos += 1
            out = []
            while self.peek() != '"':
                if not self.peek():
                    raise self.error("unterminated string", start)
                if self.peek() == "\\":
                    self.pos += 1
                out.append(self.peek())
                self.pos += 1
            self.pos += 1
            return "".join(out)
        start = self.pos
        while self.peek() and self.peek() not in _BARE_STOP:
            self.pos += 1
        if self.pos == start:
            found = f"'{ch}'" if ch else "the end of the pipeline"
            raise self.error(f"expected a value, found {found}")
        return self.text[start : self.pos]


def _with_caret(message: str, text: str, column: int) -> str:
    return f"{message}\n  {text}\n  {' ' * column}^"
