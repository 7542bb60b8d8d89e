"""The library's entry points: run a pipeline over a model, stamp the provenance of the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import onnx_ir

from qdq_passes.infra.manager import PassManager, RunReport
from qdq_passes.infra import pipeline as _pipeline
from qdq_passes.infra import registry as _registry
from qdq_passes.infra.pass_base import QdqPass
from qdq_passes.infra.pipeline import Pipeline
from qdq_passes.passes import register_builtin_passes
from qdq_passes.model_io import load_model
from qdq_passes.runtime import configure
from qdq_passes.version import __version__

__all__ = ["run", "run_with_report", "stamp_provenance", "parse_pipeline", "get_pass", "registered_passes",
           "PIPELINE_KEY", "VERSION_KEY"]

def parse_pipeline(text: str, *, defaults: dict | None = None) -> Pipeline:
    """Parse pipeline text over the built-in and plugin passes (see :mod:`qdq_passes.infra.pipeline`)."""
    register_builtin_passes()
    return _pipeline.parse_pipeline(text, defaults=defaults)


def get_pass(name: str) -> type[QdqPass]:
    """The pass registered as ``name``, built-in and plugin passes included."""
    register_builtin_passes()
    return _registry.get_pass(name)


def registered_passes() -> dict[str, type[QdqPass]]:
    """Every pass, built-in and plugin, sorted by name."""
    register_builtin_passes()
    return _registry.registered_passes()


PIPELINE_KEY = "qdq_passes.pipeline"
VERSION_KEY = "qdq_passes.version"


def run(model: str | Path | onnx.ModelProto | onnx_ir.Model, pipeline: str | Pipeline, **options: Any) -> onnx_ir.Model:
    """Run a pipeline on a model (a path, a ModelProto or an onnx_ir.Model) and return the result.

    The input is never modified: paths and protos are loaded afresh, an ``onnx_ir.Model`` is cloned
    unless ``in_place=True``. Keyword options: ``in_place``, ``threads``, ``seed``; ``calib``,
    ``float_model`` and ``device`` (defaults for every pass declaring that option, as ``qdq-opt
    --calib`` does); and the :class:`PassManager` instrumentation options (``verify_each``,
    ``print_ir_after_all``, ...).
    """
    return run_with_report(model, pipeline, **options)[0]


def run_with_report(
    model: str | Path | onnx.ModelProto | onnx_ir.Model,
    pipeline: str | Pipeline,
    *,
    in_place: bool = False,
    threads: int | None = None,
    seed: int | None = None,
    calib: str | Path | None = None,
    float_model: str | Path | None = None,
    device: str | None = None,
    **manager_options: Any,
) -> tuple[onnx_ir.Model, RunReport]:
    """As :func:`run`, also returning the :class:`RunReport` (timings, statistics)."""
    configure(threads=threads, seed=seed)
    if isinstance(pipeline, str):
        defaults = {key: str(value) for key, value in
                    (("calib", calib), ("float-model", float_model), ("device", device)) if value is not None}
        pipeline = parse_pipeline(pipeline, defaults=defaults)
    elif calib is not None or float_model is not None or device is not None:
        raise TypeError("calib/float_model/device apply to pipeline text; set them on the passes of a Pipeline")
    if isinstance(model, (str, Path)):
        ir_model = load_model(model)
    elif isinstance(model, onnx.ModelProto):
        ir_model = onnx_ir.from_proto(onnx.load_model_from_string(model.SerializeToString()))
    elif isinstance(model, onnx_ir.Model):
        ir_model = model if in_place else model.clone()
    else:
        raise TypeError(f"run() takes a path, an onnx.ModelProto or an onnx_ir.Model, not {type(model).__name__}")
    report = PassManager(pipeline, **manager_options).run(ir_model)
    stamp_provenance(ir_model, pipeline)
    return ir_model, report


def stamp_provenance(model: onnx_ir.Model, pipeline: Pipeline) -> None:
    """Record the canonical pipeline and the library version in the model's ``metadata_props``."""
    model.metadata_props[PIPELINE_KEY] = str(pipeline)
    model.metadata_props[VERSION_KEY] = __version__
