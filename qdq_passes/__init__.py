"""qdq-passes: compiler passes over quantized (QDQ) ONNX models.

The public API::

    import qdq_passes
    model = qdq_passes.run("model.onnx", "constants-to-initializers,dce,topo-sort")
    pipeline = qdq_passes.parse_pipeline("dce,topo-sort")
    print(pipeline)               # canonical text, every option spelled out

Every pass is an ``onnx_ir.passes.InPlacePass`` and also runs in a plain onnx_ir PassManager.
The names below are imported on first use, so ``import qdq_passes.cli`` costs nothing until the
command runs (a Ctrl-C during the imports then reaches ``qdq-opt``'s handler, not a traceback).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qdq_passes.api import (
        PIPELINE_KEY, VERSION_KEY, get_pass, parse_pipeline, registered_passes, run, run_with_report, stamp_provenance)
    from qdq_passes.infra.errors import QdqError
    from qdq_passes.infra.manager import PassManager, RunReport
    from qdq_passes.infra.pass_base import QdqPass
    from qdq_passes.infra.pipeline import Pipeline
    from qdq_passes.infra.registry import register_pass
    from qdq_passes.model_io import load_model, save_model
    from qdq_passes.runtime import configure
    from qdq_passes.version import __version__

#: Each public name and the module that defines it.
_SOURCES = {
    "run": "qdq_passes.api",
    "run_with_report": "qdq_passes.api",
    "stamp_provenance": "qdq_passes.api",
    "PIPELINE_KEY": "qdq_passes.api",
    "VERSION_KEY": "qdq_passes.api",
    "parse_pipeline": "qdq_passes.api",
    "Pipeline": "qdq_passes.infra.pipeline",
    "PassManager": "qdq_passes.infra.manager",
    "RunReport": "qdq_passes.infra.manager",
    "QdqPass": "qdq_passes.infra.pass_base",
    "QdqError": "qdq_passes.infra.errors",
    "register_pass": "qdq_passes.infra.registry",
    "get_pass": "qdq_passes.api",
    "registered_passes": "qdq_passes.api",
    "load_model": "qdq_passes.model_io",
    "save_model": "qdq_passes.model_io",
    "configure": "qdq_passes.runtime",
    "__version__": "qdq_passes.version",
}

__all__ = list(_SOURCES)


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use."""
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module 'qdq_passes' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
