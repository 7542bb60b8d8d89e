"""Tests of the canonical printer (qdq_passes.ir.printer)."""

from __future__ import annotations

import hashlib
import textwrap

import ml_dtypes
import numpy as np
import onnx
import onnx_ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdq_passes.ir.printer import (
    ELIDE_THRESHOLD,
    print_function,
    print_graph,
    print_model,
    tensor_digest,
)
from tests.models import (
    attention_model,
    constant_weights_model,
    conv_relu_model,
    mlp_model,
    ort_quantize,
)


def _print(proto: onnx.ModelProto, **kwargs) -> str:
    return print_model(onnx_ir.from_proto(proto), **kwargs)


def _parse(text: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(textwrap.dedent(text))


def _with_initializer(tensor: onnx.TensorProto) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", [tensor.name], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", tensor.data_type, list(tensor.dims))],
        initializer=[tensor],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def _initializer_line(text: str, name: str) -> str:
    [line] = [ln.strip() for ln in text.splitlines() if f" {name} = " in ln]
    return line.rstrip(",")


# --------------------------------------------------------------------------- format


def test_exact_format_of_a_small_model():
    model = _parse(
        """
        <ir_version: 8, opset_import: ["" : 17], producer_name: "dropped", metadata_props: ["k": "v"]>
        main (float[N,2] x) => (float[N,2] y)
        <float[2] b = {0.5, -1}, float[3,6] w = {0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17}>
        {
          t = Add (x, b)
          y = LeakyRelu <alpha = 0.1> (t)
        }
        """
    )
    digest = hashlib.sha256(np.arange(18, dtype=np.float32).tobytes()).hexdigest()[:16]
    expected = textwrap.dedent(
        f"""\
        <
          ir_version: 8,
          opset_import: ["" : 17],
          metadata_props: [
            "k": "v"
          ]
        >
        main (float[N,2] x) => (float[N,2] y)
          <
            float[2] b = {{0.5, -1.0}},
            float[3,6] w = sha256:{digest}
          >
        {{
          t = Add (x, b)
          y = LeakyRelu <alpha = 0.1> (t)
        }}
        """
    )
    assert _print(model) == expected


def test_printer_outputs_are_strings_ending_in_newline():
    ir_model = onnx_ir.from_proto(mlp_model())
    assert print_graph(ir_model.graph).endswith("}\n")
    assert print_model(ir_model).startswith("<\n  ir_version: 8,")


def test_shapes_symbolic_unknown_scalar_and_unknown_rank():
    model = _parse(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[batch,?,3] x, float s, float[] u) => (float[batch,?,3] y)
        { y = Mul (x, s) }
        """
    )
    assert "g (float[batch,?,3] x, float s, float[] u) => (float[batch,?,3] y)" in _print(model)


def test_non_identifier_names_are_quoted_and_kept():
    model = _parse(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] "/x:0") => (float[2] "out.1") { "out.1" = Relu ("/x:0") }
        """
    )
    text = _print(model)
    assert '"out.1" = Relu ("/x:0")' in text


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("quantized", [False, True], ids=["float", "ort-qdq"])
def test_deterministic_across_prints_and_save_load(tmp_path, quantized):
    def build() -> onnx.ModelProto:
        model = conv_relu_model()
        return ort_quantize(model, tmp_path / "ort") if quantized else model

    text = _print(build())
    assert "sha256:" in text
    ir_model = onnx_ir.from_proto(build())
    assert print_model(ir_model) == print_model(ir_model) == text

    onnx_ir.save(ir_model, tmp_path / "inline.onnx")
    assert print_model(onnx_ir.load(tmp_path / "inline.onnx")) == text

    onnx_ir.save(
        onnx_ir.from_proto(build()),
        tmp_path / "ext.onnx",
        external_data="ext.onnx.data",
        size_threshold_bytes=0,
    )
    assert (tmp_path / "ext.onnx.data").stat().st_size > 0
    loaded = onnx_ir.load(tmp_path / "ext.onnx")
    assert any(isinstance(v.const_value, onnx_ir.ExternalTensor) for v in loaded.graph.initializers.values())
    assert print_model(loaded) == text
    # and once more, from the model loaded with external data
    onnx_ir.save(loaded, tmp_path / "again.onnx")
    assert print_model(onnx_ir.load(tmp_path / "again.onnx")) == text


def test_storage_form_does_not_change_the_text():
    raw = conv_relu_model()
    typed = conv_relu_model()
    for i, t in enumerate(typed.graph.initializer):
        arr = numpy_helper.to_array(t)
        typed.graph.initializer[i].CopyFrom(
            helper.make_tensor(t.name, TensorProto.FLOAT, arr.shape, arr.ravel().tolist())
        )
    assert not typed.graph.initializer[0].HasField("raw_data")
    assert _print(typed) == _print(raw)


def test_node_names_and_doc_strings_are_dropped():
    a, b = attention_model(), attention_model()
    for i, node in enumerate(b.graph.node):
        node.name = f"/block/node_{i}"
        node.doc_string = "exported from somewhere"
    a.graph.node[0].name = "other"
    assert _print(a) == _print(b)


def test_every_builder_prints_deterministically():
    for build in (conv_relu_model, constant_weights_model, mlp_model, attention_model):
        assert _print(build(0)) == _print(build(0))
        assert _print(build(0)) != _print(build(1))


# --------------------------------------------------------------------------- tensors


def test_changing_one_weight_changes_only_its_hash():
    base = conv_relu_model()
    changed = conv_relu_model()
    w = numpy_helper.to_array(changed.graph.initializer[0]).copy()
    assert changed.graph.initializer[0].name == "conv1_w" and w.size > ELIDE_THRESHOLD
    w[1, 2, 0, 1] = np.nextafter(w[1, 2, 0, 1], np.float32(np.inf))  # one ulp
    changed.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "conv1_w"))
    before, after = _print(base).splitlines(), _print(changed).splitlines()
    diff = [(x, y) for x, y in zip(before, after) if x != y]
    assert len(before) == len(after) and len(diff) == 1
    assert "conv1_w = sha256:" in diff[0][0] and "conv1_w = sha256:" in diff[0][1]


@pytest.mark.parametrize("n", [ELIDE_THRESHOLD, ELIDE_THRESHOLD + 1])
def test_elision_threshold(n):
    arr = (np.arange(n, dtype=np.float32) - 3) / 4
    line = _initializer_line(_print(_with_initializer(numpy_helper.from_array(arr, "w"))), "w")
    if n <= 16:
        values = ", ".join(str(v) for v in arr)
        assert line == f"float[{n}] w = {{{values}}}"
    else:
        digest = hashlib.sha256(arr.tobytes()).hexdigest()[:16]
        assert line == f"float[{n}] w = sha256:{digest}"


def test_digest_depends_on_dtype_bytes_and_values():
    f = onnx_ir.tensor(np.arange(20, dtype=np.float32))
    i = onnx_ir.tensor(np.arange(20, dtype=np.int32))
    assert tensor_digest(f) == hashlib.sha256(np.arange(20, dtype="<f4").tobytes()).hexdigest()[:16]
    assert tensor_digest(f) != tensor_digest(i)
    assert tensor_digest(onnx_ir.tensor(np.zeros(20, np.float32))) != tensor_digest(
        onnx_ir.tensor(np.full(20, -0.0, np.float32))
    )


def test_float_values_round_trip_exactly():
    arr = np.array([0.1, 1e-30, 3.4028235e38, -0.0, np.nan, -np.inf, 1 / 3, 7], dtype=np.float32)
    line = _initializer_line(_print(_with_initializer(numpy_helper.from_array(arr, "w"))), "w")
    assert line == (
        "float[8] w = {0.1, 1e-30, 3.4028235e+38, -0.0, nan, -inf, 0.33333334, 7.0}"
    )
    parsed = [np.float32(s) for s in line.split("{")[1].rstrip("}").split(", ")]
    np.testing.assert_array_equal(np.array(parsed, np.float32), arr)
    dbl = np.array([0.1, 1 / 3], dtype=np.float64)
    text = _print(_with_initializer(numpy_helper.from_array(dbl, "d")))
    assert _initializer_line(text, "d") == "double[2] d = {0.1, 0.3333333333333333}"


def test_int4_initializers_small_and_elided():
    small = np.array([-8, 7, 0, -1, 3], dtype=ml_dtypes.int4)
    packed = numpy_helper.from_array(small, "q")  # raw_data, two per byte
    typed = helper.make_tensor("q", TensorProto.INT4, [5], [-8, 7, 0, -1, 3])  # int32_data
    for tensor in (packed, typed):
        line = _initializer_line(_print(_with_initializer(tensor)), "q")
        assert line == "int4[5] q = {-8, 7, 0, -1, 3}"
    u4 = numpy_helper.from_array(np.array([0, 15, 9], dtype=ml_dtypes.uint4), "u")
    assert _initializer_line(_print(_with_initializer(u4)), "u") == "uint4[3] u = {0, 15, 9}"

    big = (np.arange(33) % 16 - 8).astype(ml_dtypes.int4).reshape(3, 11)
    line = _initializer_line(_print(_with_initializer(numpy_helper.from_array(big, "b"))), "b")
    packed_bytes = onnx_ir.tensor(big).tobytes()
    assert len(packed_bytes) == 17  # 33 nibbles, low nibble first, padded
    assert line == f"int4[3,11] b = sha256:{hashlib.sha256(packed_bytes).hexdigest()[:16]}"
    big_typed = helper.make_tensor("b", TensorProto.INT4, [3, 11], big.astype(np.int8).ravel().tolist())
    assert _initializer_line(_print(_with_initializer(big_typed)), "b") == line


def test_float8_initializers():
    vals = np.array([0.5, 448, -0.0, np.nan, 0.001953125], dtype=ml_dtypes.float8_e4m3fn)
    line = _initializer_line(_print(_with_initializer(numpy_helper.from_array(vals, "f"))), "f")
    assert line == "float8e4m3fn[5] f = {0.5, 448.0, -0.0, nan, 0.001953125}"
    e5 = helper.make_tensor("e", TensorProto.FLOAT8E5M2, [3], [1.5, -57344.0, 2.0**-16])
    assert _initializer_line(_print(_with_initializer(e5)), "e") == (
        "float8e5m2[3] e = {1.5, -57344.0, 1.5258789e-05}"
    )
    h = numpy_helper.from_array(np.array([0.1, 65504], dtype=np.float16), "h")
    assert _initializer_line(_print(_with_initializer(h)), "h") == "float16[2] h = {0.099975586, 65504.0}"


def test_string_and_bool_tensors():
    s = helper.make_tensor("s", TensorProto.STRING, [2], [b"a", b'b"c'])
    assert _initializer_line(_print(_with_initializer(s)), "s") == 'string[2] s = {"a", "b\\"c"}'
    b = numpy_helper.from_array(np.array([True, False]), "b")
    assert _initializer_line(_print(_with_initializer(b)), "b") == "bool[2] b = {1, 0}"


def test_constant_attribute_tensors_follow_elision():
    text = _print(constant_weights_model())
    assert "conv1_w = Constant <value = float[4,3,3,3] sha256:" in text
    assert "conv1_b = Constant <value = float[4] {" in text


# --------------------------------------------------------------------------- nodes


def test_omitted_optional_inputs():
    model = _parse(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,1,2,2] x, int64[4] sizes) => (float[1,1,4,4] y, float[1,1,2,2] z)
        {
          y = Resize <mode = "nearest"> (x, , , sizes)
          z = Resize (x, "", "")
          a, , c = Split <num_outputs = 3> (x)
        }
        """
    )
    text = _print(model)
    assert 'y = Resize <mode = "nearest"> (x, , , sizes)' in text
    assert "z = Resize (x)" in text  # trailing empty inputs dropped
    assert "a, , c = Split <num_outputs = 3> (x)" in text


def test_if_subgraph_is_printed_recursively():
    model = _parse(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (bool c, float[2] x) => (float[2] y)
        {
          y = If (c) <
            then_branch = then_g () => (float[2] t) <float[1] k = {2.0}> { t = Mul (x, k) },
            else_branch = else_g () => (float[2] e) {
              e = If (c) <
                then_branch = inner_t () => (float[2] i) { i = Neg (x) },
                else_branch = inner_e () => (float[2] j) { j = Abs (x) }>
            }>
        }
        """
    )
    expected = textwrap.dedent(
        """\
        {
          y = If <
            else_branch = else_g () => (float[2] e)
            {
              e = If <
                else_branch = inner_e () => (float[2] j)
                {
                  j = Abs (x)
                },
                then_branch = inner_t () => (float[2] i)
                {
                  i = Neg (x)
                }
              > (c)
            },
            then_branch = then_g () => (float[2] t)
              <
                float[1] k = {2.0}
              >
            {
              t = Mul (x, k)
            }
          > (c)
        }
        """
    )
    assert _print(model).endswith(expected)


def test_model_local_functions_sorted_after_graph():
    model = _parse(
        """
        <ir_version: 10, opset_import: ["" : 17, "zz" : 1, "local" : 1]>
        g (float[2] x) => (float[2] y)
        {
          t = zz.B (x)
          y = local.A <alpha = 0.25> (t)
        }
        <domain: "zz", opset_import: ["" : 17]>
        B (a) => (b) { b = Relu (a) }
        <domain: "local", opset_import: ["" : 17]>
        A <beta, alpha: float = 0.5> (a) => (b) { b = LeakyRelu <alpha: float = @alpha> (a) }
        """
    )
    text = _print(model)
    assert text.index("\nA <alpha = 0.5, beta> (a) => (b)\n") < text.index("\nB (a) => (b)\n")
    assert "b = LeakyRelu <alpha: float = @alpha> (a)" in text
    ir_model = onnx_ir.from_proto(model)
    function = ir_model.functions[("local", "A", "")]
    assert print_function(function) in text


def test_value_info_of_intermediate_values():
    ir_model = onnx_ir.from_proto(conv_relu_model())
    assert "float[1,4,8,8] conv1" not in print_model(ir_model)
    onnx_ir.passes.common.ShapeInferencePass()(ir_model)
    listed = "    float[1,4,8,8] conv1,\n    float[1,4,8,8] relu1\n  >"
    assert listed in print_model(ir_model)  # on by default, after the initializers
    assert "float[1,4,8,8] conv1" not in print_model(ir_model, value_info=False)
    assert "float[1,4,6,6] y\n" not in print_model(ir_model)  # graph outputs are in the signature


# --------------------------------------------------------------------------- parse back


def test_parse_back_prints_the_same():
    text = """
        <ir_version: 10, opset_import: ["local" : 1, "" : 21], metadata_props: ["z": "2", "a": "x \\"y\\""]>
        "my graph" (float[N,3] "in/0", bool c, float[] u) => (float[N,3] y, float[2] k)
        <float[2] w = {1.5, 2}, int64[2] sh = {3, 4}, float s = {0.1}, uint8 zp = {128},
         float[16] full = {1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16}, string[1] str = {"a"}>
        {
          t = local.F <alpha = 0.25> ("in/0")
          y = Add (t, w)
          r = Resize ("in/0", , sh)
          q = QuantizeLinear <axis = 0, block_size = 0> (u, s, zp)
          e = Constant <value_floats: floats = [], value = float[2] {1, nan}> ()
          k = If (c) <then_branch = g1 () => (float[2] o) <float[1] kk = {1.0}> { o = Add (w, kk) },
                      else_branch = g2 () => (float[2] o) { o = Identity (w) }>
          a, , b = Split <num_outputs = 3> ("in/0")
        }
        <domain: "local", opset_import: ["" : 21]>
        F <beta, alpha: float = 0.5> (a) => (b) { b = LeakyRelu <alpha: float = @alpha> (a) }
        <domain: "local", overload: "v2", opset_import: ["" : 21]>
        F (a) => (b) { b = Relu (a) }
        """
    first = _print(_parse(text))
    assert "sha256" not in first
    assert _print(onnx.parser.parse_model(first)) == first


def test_parse_back_builders_without_elision(monkeypatch):
    import qdq_passes.ir.printer as printer

    monkeypatch.setattr(printer, "ELIDE_THRESHOLD", 10**6)
    for build in (conv_relu_model, constant_weights_model, mlp_model, attention_model):
        ir_model = onnx_ir.from_proto(build())
        onnx_ir.passes.common.ShapeInferencePass()(ir_model)  # value types listed too
        first = print_model(ir_model)
        assert "sha256" not in first
        reparsed = onnx.parser.parse_model(first)
        onnx.checker.check_model(reparsed, full_check=True)
        assert len(reparsed.graph.value_info) >= 2
        assert _print(reparsed) == first
