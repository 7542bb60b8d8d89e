"""The built-in passes, one module each, and :func:`register_builtin_passes`.

Every module of this package defines (or imports) passes that register themselves with
``@register_pass``; :func:`register_builtin_passes` imports them all, then every entry point of the
``qdq_passes.passes`` group, so a package outside this one adds passes by declaring, in its
``pyproject.toml``::

    [project.entry-points."qdq_passes.passes"]
    my-pass = "my_package.my_module:MyPass"      # a QdqPass subclass, or a module that registers some

Adding a built-in pass is adding a module here (docs/adding-a-pass.md).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from importlib import metadata

from qdq_passes.infra.pass_base import QdqPass
from qdq_passes.infra.registry import register_pass

__all__ = ["register_builtin_passes", "ENTRY_POINT_GROUP"]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "qdq_passes.passes"
_done = False


def register_builtin_passes() -> None:
    """Register the built-in passes and the plugins' (once; later calls do nothing).

    A plugin that fails to load is named in one warning and left out; the rest still load.
    """
    global _done
    if _done:
        return
    _done = True
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{module}")
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
            if isinstance(loaded, type) and issubclass(loaded, QdqPass):
                register_pass(loaded)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the built-in passes
            logger.warning("plugin pass '%s' (%s) not loaded: %s: %s", entry.name, entry.value,
                           type(exc).__name__, exc)
