"""Model verification: our structural checks, then the ONNX checker (large tensors left out)."""

from __future__ import annotations

import onnx
import onnx_ir
from onnx_ir.passes.common import _c_api_utils

from qdq_passes.infra.errors import VerificationError

__all__ = ["verify_model", "structural_errors", "onnx_checker"]


def verify_model(model: onnx_ir.Model, *, checker: bool = True, full_check: bool = False) -> None:
    """Raise :class:`VerificationError` naming the first problem found in ``model``.

    ``full_check`` also runs ONNX shape inference in strict mode.
    """
    problems = structural_errors(model)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise VerificationError(problems[0] + more)
    if checker:
        try:
            onnx_checker(model, full_check=full_check)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise VerificationError(f"ONNX checker: {' '.join(str(exc).split())}") from None
        except onnx_ir.serde.SerdeError as exc:  # e.g. a name or string field that is not UTF-8
            raise VerificationError(f"cannot be written as ONNX ({_innermost(exc)})") from None


def onnx_checker(model: onnx_ir.Model, *, full_check: bool = False) -> None:
    """Run ``onnx.checker.check_model`` on a copy without tensor data (initializers become inputs).

    onnx_ir's helper leaves out initializers over 1 KB; external ones below that are left out here
    too, since the checker would resolve their files against the working folder.
    """

    def check(proto: onnx.ModelProto) -> None:
        kept = [t for t in proto.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(kept)
        onnx.checker.check_model(proto, full_check=full_check)

    _c_api_utils.call_onnx_api(check, model)


def _innermost(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def structural_errors(model: onnx_ir.Model) -> list[str]:
    """Problems with use-before-definition, duplicate names, dangling outputs and missing opsets."""
    problems: list[str] = []
    imported = set(model.opset_imports) | {"ai.onnx"}
    _check_graph(model.graph, set(), imported, problems)
    for function in model.functions.values():
        for node in function:
            if node.domain not in imported and node.domain not in function.opset_imports:
                problems.append(f"function '{function.name}': node {_name(node)} uses domain '{node.domain}' with no opset import")
    return problems


def _check_graph(graph: onnx_ir.Graph, outer: set[onnx_ir.Value], imported: set[str], problems: list[str]) -> None:
    defined = set(outer)
    names: dict[str, str] = {}

    def define(value: onnx_ir.Value, what: str) -> None:
        defined.add(value)
        if value.name:
            if value.name in names and names[value.name] != what:
                problems.append(f"graph '{graph.name}': value name '{value.name}' is defined twice ({names[value.name]} and {what})")
            names.setdefault(value.name, what)

    for value in graph.inputs:
        define(value, "a graph input")
    for name, value in graph.initializers.items():
        if value.const_value is None:
            problems.append(f"graph '{graph.name}': initializer '{name}' has no data")
        if value not in defined:
            define(value, "an initializer")
    for node in graph:
        for index, value in enumerate(node.inputs):
            if value is not None and value not in defined:
                problems.append(f"node {_name(node)} input {index} '{value.name}' is used before it is defined (or never defined)")
        for attr in node.attributes.values():
            for sub in _subgraphs(attr):
                _check_graph(sub, defined, imported, problems)
        if node.domain not in imported:
            problems.append(f"node {_name(node)} uses domain '{node.domain}' that the model does not import")
        for value in node.outputs:
            define(value, f"output of node {_name(node)}")
    for value in graph.outputs:
        if value not in defined:
            problems.append(f"graph '{graph.name}': output '{value.name}' is never defined")


def _subgraphs(attr: onnx_ir.Attr) -> list[onnx_ir.Graph]:
    if attr.type == onnx_ir.AttributeType.GRAPH:
        return [attr.as_graph()]
    if attr.type == onnx_ir.AttributeType.GRAPHS:
        return list(attr.as_graphs())
    return []


def _name(node: onnx_ir.Node) -> str:
    label = f"'{node.name}'" if node.name else "(unnamed)"
    return f"{label} ({node.domain + '.' if node.domain else ''}{node.op_type})"
