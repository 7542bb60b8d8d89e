"""The pass registry: every pass is found by its pipeline name (its ``argument``).

The registry holds the table and the decorator only; which passes exist is decided outside the
infrastructure (:func:`qdq_passes.passes.register_builtin_passes`: the built-in ones and plugins).
"""

from __future__ import annotations

import difflib
import re
from typing import TypeVar

from qdq_passes.infra.errors import UnknownPassError
from qdq_passes.infra.pass_base import QdqPass

__all__ = ["register_pass", "get_pass", "registered_passes"]

_PASSES: dict[str, type[QdqPass]] = {}
_KEBAB = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
P = TypeVar("P", bound=type[QdqPass])


def register_pass(cls: P) -> P:
    """Class decorator: register a :class:`QdqPass` under its ``argument``."""
    name = cls.argument
    if not _KEBAB.match(name):
        raise ValueError(f"pass name '{name}' of {cls.__qualname__} is not kebab-case")
    if not cls.summary:
        raise ValueError(f"pass '{name}' has no summary")
    existing = _PASSES.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(f"pass name '{name}' is taken by {existing.__module__}.{existing.__qualname__}")
    _PASSES[name] = cls
    return cls


def get_pass(name: str) -> type[QdqPass]:
    """The pass class registered as ``name``; unknown names fail with a close-match suggestion."""
    try:
        return _PASSES[name]
    except KeyError:
        hint = difflib.get_close_matches(name, list(_PASSES), n=1)
        tail = f"; did you mean '{hint[0]}'?" if hint else " (see qdq-opt --list-passes)"
        raise UnknownPassError(f"unknown pass '{name}'{tail}") from None


def registered_passes() -> dict[str, type[QdqPass]]:
    """All registered passes, sorted by name."""
    return dict(sorted(_PASSES.items()))
