"""Canonical text form of an ONNX model, for golden tests and diffs.

The output is ONNX textual syntax (what ``onnx.parser.parse_model`` reads and
``onnx.printer.to_text`` writes), made canonical:

1. Header: ``ir_version``, ``opset_import`` sorted by domain, and the model's
   ``metadata_props`` sorted by key, one per line. Producer, model version and
   doc strings are left out.
2. Graph signature with input/output types; symbolic dims print by name,
   unknown dims as ``?``, an unknown rank as ``float[]``, a scalar as ``float``.
3. Initializers sorted by name. A tensor of at most ``ELIDE_THRESHOLD`` (16)
   elements prints its values: floats as the shortest string that round-trips
   (doubles as ``repr``; float16, bfloat16, float8 and float4 decoded to their
   exact value, printed as the shortest float32 text), 4/2-bit integers
   unpacked, bools as 0/1. A larger tensor prints as
   ``dtype[shape] sha256:<16 hex>``, the first 16 hex digits of the SHA-256 of
   its raw little-endian bytes (packed for sub-byte types): the digest depends
   on values and dtype only, never on how the tensor is stored (raw, typed
   fields, external data). See ``tensor_digest``. After the initializers
   come the known types of intermediate values (node outputs that are not
   graph outputs), sorted by name; ``value_info=False`` leaves them out.
4. Nodes in graph order, one per line, ``outs = domain.Op:overload <attrs> (ins)``.
   Node names, doc strings and metadata are dropped; attributes are sorted by
   name; an empty optional input prints as nothing (``(x, , s)``), and trailing
   empty inputs and outputs are dropped. Attribute tensors follow rule 3.
   Subgraph attributes (If, Loop, Scan) print recursively, indented.
5. Value names are kept; a name that is not an identifier is quoted.
   Unnamed values print as ``"%0"``, ``"%1"``, ... by first appearance.
6. Model-local functions follow the graph, sorted by (domain, name, overload);
   their attributes are sorted by name.

Known limits of a parse back (``onnx.parser.parse_model``): elided tensors do
not parse; the ONNX parser reads float16/bfloat16/float8 literals as bit
patterns and stores int4/uint4 literals unpacked, so small tensors of those
types print readably but do not parse back to the same values; the parser
reads ``\\n`` in a string as ``n``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
import onnx_ir

__all__ = [
    "ELIDE_THRESHOLD",
    "print_function",
    "print_graph",
    "print_model",
    "tensor_digest",
]

ELIDE_THRESHOLD = 16
"""Tensors with more elements than this print as a digest instead of values."""

_INDENT = "  "
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

_DT = onnx_ir.DataType
_FLOAT32_LIKE = {
    _DT.FLOAT,
    _DT.FLOAT16,
    _DT.BFLOAT16,
    _DT.FLOAT8E4M3FN,
    _DT.FLOAT8E4M3FNUZ,
    _DT.FLOAT8E5M2,
    _DT.FLOAT8E5M2FNUZ,
    _DT.FLOAT8E8M0,
    _DT.FLOAT4E2M1,
    _DT.FLOAT6E2M3,
    _DT.FLOAT6E3M2,
}


def print_model(model: onnx_ir.Model, *, value_info: bool = True) -> str:
    """Return the canonical text of ``model``.

    ``value_info`` lists the known types of intermediate values (sorted by
    name) after the initializers of each graph; pass False to leave them out.
    """
    return _Printer(value_info).model(model)


def print_graph(graph: onnx_ir.Graph, *, value_info: bool = True) -> str:
    """Return the canonical text of one graph (no model header, no functions)."""
    return "\n".join(_Printer(value_info).graph(graph, "")) + "\n"


def print_function(function: onnx_ir.Function) -> str:
    """Return the canonical text of one model-local function."""
    return "\n".join(_Printer(False).function(function)) + "\n"


def tensor_digest(tensor: onnx_ir.TensorProtocol) -> str:
    """First 16 hex digits of the SHA-256 of the tensor's little-endian bytes.

    Sub-byte types hash their packed bytes; string tensors hash each element as
    an 8-byte little-endian length followed by its bytes.
    """
    h = hashlib.sha256()
    if tensor.dtype == _DT.STRING:
        for s in _string_data(tensor):
            h.update(len(s).to_bytes(8, "little"))
            h.update(s)
    else:
        h.update(tensor.tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- scalars


def _quote(s: str | bytes) -> str:
    if isinstance(s, bytes):
        s = s.decode("utf-8", errors="backslashreplace")
    s = s.replace("\\", "\\\\").replace('"', '\\"')
    s = s.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{s}"'


def _ident(name: str) -> str:
    return name if _IDENTIFIER.match(name) else _quote(name)


def _fmt_float(value: float, dtype: onnx_ir.DataType) -> str:
    """Shortest text that reads back to the same value.

    Doubles use ``repr``; every narrower float type is exactly representable in
    float32 and prints as the shortest float32 text of its exact value. Like
    ``repr``: positional for 1e-4 <= |v| < 1e16, scientific otherwise.
    """
    if dtype == _DT.DOUBLE:
        return repr(float(value))
    v = np.float32(value)
    if np.isnan(v):
        return "nan"
    if np.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0 or 1e-4 <= abs(v) < 1e16:
        return np.format_float_positional(v, unique=True, trim="0")
    return np.format_float_scientific(v, unique=True, trim="-")


def _string_data(tensor: onnx_ir.TensorProtocol) -> list[bytes]:
    if hasattr(tensor, "string_data"):
        return list(tensor.string_data())
    return [bytes(s) for s in np.asarray(tensor.numpy()).reshape(-1)]


def _tensor_values(tensor: onnx_ir.TensorProtocol) -> list[str]:
    dtype = tensor.dtype
    if dtype == _DT.STRING:
        return [_quote(s) for s in _string_data(tensor)]
    flat = np.asarray(tensor.numpy()).reshape(-1)
    if dtype == _DT.BOOL:
        return ["1" if v else "0" for v in flat]
    if dtype in (_DT.COMPLEX64, _DT.COMPLEX128):
        return [repr(complex(v)) for v in flat]
    if dtype == _DT.DOUBLE:
        return [_fmt_float(v, dtype) for v in flat]
    if dtype in _FLOAT32_LIKE:
        return [_fmt_float(v, _DT.FLOAT) for v in flat.astype(np.float32)]
    if dtype in (_DT.INT4, _DT.INT2):
        flat = flat.astype(np.int8)
    elif dtype in (_DT.UINT4, _DT.UINT2):
        flat = flat.astype(np.uint8)
    return [str(int(v)) for v in flat]


def _tensor_text(tensor: onnx_ir.TensorProtocol) -> tuple[str, str]:
    """(type text, value text) of a tensor literal, eliding big ones."""
    dims = [int(d) for d in tensor.shape.dims]
    name = tensor.dtype.name.lower()
    ttype = f"{name}[{','.join(map(str, dims))}]" if dims else name
    if int(np.prod(dims, dtype=np.int64)) > ELIDE_THRESHOLD:
        return ttype, f"sha256:{tensor_digest(tensor)}"
    return ttype, "{" + ", ".join(_tensor_values(tensor)) + "}"


def _dim(d: object) -> str:
    if isinstance(d, int):
        return str(d)
    value = getattr(d, "value", None)
    if isinstance(value, int):
        return str(value)
    if value is None:
        return "?"
    return _ident(str(value))


def _type_text(type_: onnx_ir.TypeProtocol | None, shape: onnx_ir.Shape | None) -> str | None:
    if type_ is None:
        return None
    if isinstance(type_, onnx_ir.TensorType):
        name = type_.dtype.name.lower()
        if shape is None:
            return f"{name}[]"
        if len(shape) == 0:
            return name
        return f"{name}[{','.join(_dim(d) for d in shape)}]"
    if isinstance(type_, onnx_ir.SparseTensorType):
        inner = _type_text(onnx_ir.TensorType(type_.dtype), shape)
        return f"sparse_tensor({inner})"
    if isinstance(type_, onnx_ir.SequenceType):
        return f"seq({_type_text(type_.elem_type, None)})"
    if isinstance(type_, onnx_ir.OptionalType):
        return f"optional({_type_text(type_.elem_type, None)})"
    return str(type_)


def _strip_trailing(items: Sequence[onnx_ir.Value | None]) -> list[onnx_ir.Value | None]:
    out = list(items)
    while out and (out[-1] is None or (out[-1].name == "" and not out[-1].uses())):
        out.pop()
    return out


# --------------------------------------------------------------------------- printer


class _Printer:
    """Holds the per-print state: names given to unnamed values."""

    def __init__(self, value_info: bool) -> None:
        self._value_info = value_info
        self._unnamed: dict[int, str] = {}

    def name(self, value: onnx_ir.Value | None) -> str:
        if value is None or value.name == "":
            return ""
        if value.name is None:
            key = id(value)
            if key not in self._unnamed:
                self._unnamed[key] = f'"%{len(self._unnamed)}"'
            return self._unnamed[key]
        return _ident(value.name)

    def typed_name(self, value: onnx_ir.Value) -> str:
        ttext = _type_text(value.type, value.shape)
        return self.name(value) if ttext is None else f"{ttext} {self.name(value)}"

    # -- model and functions

    def model(self, model: onnx_ir.Model) -> str:
        lines = ["<", f"{_INDENT}ir_version: {model.ir_version},"]
        opsets = _opsets(model.opset_imports)
        props = sorted(model.metadata_props.items())
        lines.append(f"{_INDENT}opset_import: {opsets}" + ("," if props else ""))
        if props:
            lines.append(f"{_INDENT}metadata_props: [")
            entries = [f"{_INDENT * 2}{_quote(k)}: {_quote(v)}" for k, v in props]
            lines.append(",\n".join(entries))
            lines.append(f"{_INDENT}]")
        lines.append(">")
        lines.extend(self.graph(model.graph, ""))
        for key in sorted(model.functions):
            lines.append("")
            lines.extend(self.function(model.functions[key]))
        return "\n".join(lines) + "\n"

    def function(self, function: onnx_ir.Function) -> list[str]:
        lines = ["<", f'{_INDENT}domain: {_quote(function.domain)},']
        if function.overload:
            lines.append(f"{_INDENT}overload: {_quote(function.overload)},")
        lines.append(f"{_INDENT}opset_import: {_opsets(function.opset_imports)}")
        lines.append(">")
        attrs = []
        for name in sorted(function.attributes):
            attr = function.attributes[name]
            if attr.value is None:
                attrs.append(_ident(name))
            else:
                attrs.append(self.attribute(attr, ""))
        head = _ident(function.name)
        if attrs:
            head += " <" + ", ".join(attrs) + ">"
        ins = ", ".join(self.name(v) for v in function.inputs)
        outs = ", ".join(self.name(v) for v in function.outputs)
        lines.append(f"{head} ({ins}) => ({outs})")
        lines.append("{")
        for node in function:
            lines.extend(self.node(node, _INDENT))
        lines.append("}")
        return lines

    # -- graphs and nodes

    def graph(self, graph: onnx_ir.Graph, indent: str) -> list[str]:
        """Lines of a graph; the first line (the signature) carries no indent."""
        ins = ", ".join(self.typed_name(v) for v in graph.inputs)
        outs = ", ".join(self.typed_name(v) for v in graph.outputs)
        lines = [f"{_ident(graph.name or '')} ({ins}) => ({outs})"]
        decls = self.declarations(graph, indent + _INDENT * 2)
        if decls:
            lines.append(f"{indent}{_INDENT}<")
            lines.append(",\n".join(decls))
            lines.append(f"{indent}{_INDENT}>")
        lines.append(f"{indent}{{")
        for node in graph:
            lines.extend(self.node(node, indent + _INDENT))
        lines.append(f"{indent}}}")
        return lines

    def declarations(self, graph: onnx_ir.Graph, indent: str) -> list[str]:
        decls = []
        for name in sorted(graph.initializers):
            value = graph.initializers[name]
            tensor = value.const_value
            if tensor is None:
                decls.append(indent + self.typed_name(value))
                continue
            ttype, text = _tensor_text(tensor)
            decls.append(f"{indent}{ttype} {self.name(value)} = {text}")
        if self._value_info:
            skip = {id(v) for v in graph.outputs}
            inner = [
                v
                for node in graph
                for v in node.outputs
                if v.name and v.type is not None and id(v) not in skip
            ]
            for value in sorted(inner, key=lambda v: v.name or ""):
                decls.append(indent + self.typed_name(value))
        return decls

    def node(self, node: onnx_ir.Node, indent: str) -> list[str]:
        outs = ", ".join(self.name(v) for v in _strip_trailing(node.outputs))
        ins = ", ".join(self.name(v) for v in _strip_trailing(node.inputs))
        op = f"{node.domain}.{node.op_type}" if node.domain else node.op_type
        if node.overload:
            op += f":{node.overload}"
        names = sorted(node.attributes)
        has_graph = any(
            node.attributes[n].type in (onnx_ir.AttributeType.GRAPH, onnx_ir.AttributeType.GRAPHS)
            and not node.attributes[n].is_ref()
            for n in names
        )
        if not names:
            return [f"{indent}{outs} = {op} ({ins})"]
        if not has_graph:
            attrs = ", ".join(self.attribute(node.attributes[n], indent) for n in names)
            return [f"{indent}{outs} = {op} <{attrs}> ({ins})"]
        inner = indent + _INDENT
        body = [inner + self.attribute(node.attributes[n], inner) for n in names]
        return [f"{indent}{outs} = {op} <", ",\n".join(body), f"{indent}> ({ins})"]

    def attribute(self, attr: onnx_ir.Attr, indent: str) -> str:
        """``name = value`` text of an attribute; graphs span several lines."""
        kind = attr.type
        tname = kind.name.lower()
        name = _ident(attr.name)
        if attr.is_ref():
            return f"{name}: {tname} = @{_ident(attr.ref_attr_name)}"
        value = attr.value
        T = onnx_ir.AttributeType
        if kind == T.FLOAT:
            return f"{name} = {_fmt_float(value, _DT.FLOAT)}"
        if kind == T.INT:
            return f"{name} = {int(value)}"
        if kind == T.STRING:
            return f"{name} = {_quote(value)}"
        if kind == T.TENSOR:
            return f"{name} = {' '.join(_tensor_text(value))}"
        if kind == T.GRAPH:
            return f"{name} = " + "\n".join(self.graph(value, indent))
        if kind in (T.FLOATS, T.INTS, T.STRINGS, T.TENSORS, T.GRAPHS, T.TYPE_PROTOS):
            items = list(value)
            if not items:
                return f"{name}: {tname} = []"
            if kind == T.FLOATS:
                texts = [_fmt_float(v, _DT.FLOAT) for v in items]
            elif kind == T.INTS:
                texts = [str(int(v)) for v in items]
            elif kind == T.STRINGS:
                texts = [_quote(v) for v in items]
            elif kind == T.TENSORS:
                texts = [" ".join(_tensor_text(v)) for v in items]
            elif kind == T.GRAPHS:
                texts = ["\n".join(self.graph(g, indent)) for g in items]
            else:
                texts = [_type_proto_text(v) for v in items]
            return f"{name} = [{', '.join(texts)}]"
        if kind == T.TYPE_PROTO:
            return f"{name}: {tname} = {_type_proto_text(value)}"
        if kind in (T.SPARSE_TENSOR, T.SPARSE_TENSORS):
            return f"{name}: {tname} = ?"
        return f"{name} = ?"


def _type_proto_text(type_and_shape: object) -> str:
    type_ = getattr(type_and_shape, "type", type_and_shape)
    shape = getattr(type_and_shape, "shape", None)
    return _type_text(type_, shape) or "?"  # type: ignore[arg-type]


def _opsets(opsets: dict[str, int]) -> str:
    entries = [f"{_quote(domain)} : {version}" for domain, version in sorted(opsets.items())]
    return "[" + ", ".join(entries) + "]"
