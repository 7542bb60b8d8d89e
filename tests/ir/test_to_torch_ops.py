"""Tests of the Resize, Pad, generator, indexing and extra reduction converters of
qdq_passes.ir.to_torch against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx_ir
import pytest
import torch
from onnx import TensorProto, helper

from qdq_passes.ir.to_torch import UnsupportedOp, graph_to_module
from tests.ir.test_to_torch import EXACT, SUM, ULP, _make_model, _rand, node, parity

F32 = np.float32
I64 = TensorProto.INT64
EMPTY = np.zeros(0, np.float32)


def _f(*v: float) -> np.ndarray:
    return np.array(v, np.float32)


def _i(*v: int) -> np.ndarray:
    return np.array(v, np.int64)


def _module(nodes, feeds, inits=None, opset=17, outputs=("y",)):
    proto = _make_model(list(nodes), feeds, list(outputs), inits or {}, opset)
    return graph_to_module(onnx_ir.from_proto(proto))


def _assert_grad_flows(module, x: np.ndarray, *others: np.ndarray) -> None:
    t = torch.from_numpy(x).requires_grad_(True)
    out = module(t, *[torch.from_numpy(o) for o in others])
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    assert t.grad is not None and t.grad.abs().sum() > 0


# --------------------------------------------------------------------------- Resize

# name: (x shape, attrs, scales or None, sizes or None, opset)
RESIZE_CASES = {
    # nearest (exact)
    "nn-asym-floor-2x": ((1, 3, 5, 6), dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"), [1, 1, 2, 2], None, 11),
    "nn-asym-floor-2x-13": ((2, 2, 4, 3), dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"), [1, 1, 2, 2], None, 13),
    "nn-asym-floor-4x-half": ((1, 2, 5, 6), dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"), [1, 1, 4, 0.5], None, 13),
    "nn-asym-floor-3x": ((1, 2, 4, 5), dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"), [1, 1, 3, 3], None, 13),
    "nn-asym-ceil": ((1, 2, 7, 5), dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="ceil"), [1, 1, 0.6, 1.7], None, 13),
    "nn-default-2x": ((1, 2, 4, 5), dict(mode="nearest"), [1, 1, 2, 2], None, 13),
    "nn-half-floor-down": ((1, 2, 8, 9), dict(mode="nearest", nearest_mode="round_prefer_floor"), [1, 1, 0.5, 0.5], None, 13),
    "nn-half-ceil-down": ((1, 2, 8, 9), dict(mode="nearest", nearest_mode="round_prefer_ceil"), [1, 1, 0.5, 0.5], None, 13),
    "nn-half-sizes-up": ((1, 2, 4, 5), dict(mode="nearest", coordinate_transformation_mode="half_pixel"), None, [1, 2, 7, 9], 13),
    "nn-half-ceil-sizes-down": ((1, 2, 7, 8), dict(mode="nearest", nearest_mode="round_prefer_ceil"), None, [1, 2, 3, 3], 13),
    "nn-align-corners": ((1, 2, 4, 5), dict(mode="nearest", coordinate_transformation_mode="align_corners"), [1, 1, 2.5, 1.5], None, 13),
    "nn-pytorch-half-ceil": ((1, 2, 4, 5), dict(mode="nearest", coordinate_transformation_mode="pytorch_half_pixel", nearest_mode="ceil"), None, [1, 2, 1, 9], 13),
    "nn-tf-half-nn": ((1, 2, 4, 5), dict(mode="nearest", coordinate_transformation_mode="tf_half_pixel_for_nn", nearest_mode="floor"), [1, 1, 2, 1.5], None, 11),
    "nn-3d": ((2, 3, 7), dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"), [1, 1, 2], None, 13),
    "nn-5d": ((1, 2, 3, 4, 2), dict(mode="nearest"), [1, 1, 2, 1.5, 2], None, 13),
    "nn-resize-channels": ((1, 3, 4, 4), dict(mode="nearest"), [1, 2, 1, 1], None, 13),
    "nn-1d": ((6,), dict(mode="nearest", nearest_mode="floor"), [1.7], None, 13),
    "nn-tf-crop": ((1, 1, 6, 7), dict(mode="nearest", coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=-7.0), None, [1, 1, 5, 4], 13),
    "nn-opset10-up": ((1, 2, 4, 5), dict(mode="nearest"), [1, 1, 2, 3], None, 10),
    "nn-opset10-down": ((1, 2, 8, 9), dict(mode="nearest"), [1, 1, 0.5, 0.7], None, 10),
    "nn-opset10-odd": ((1, 2, 4, 5), dict(mode="nearest"), [1, 1, 1.5, 2.5], None, 10),
    "nn-symmetric-19": ((1, 2, 5, 6), dict(mode="nearest", coordinate_transformation_mode="half_pixel_symmetric"), [1, 1, 1.7, 0.6], None, 19),
    # linear
    "lin-half-sizes-up": ((1, 3, 5, 6), dict(mode="linear"), None, [1, 3, 9, 13], 13),
    "lin-half-sizes-down": ((1, 3, 9, 11), dict(mode="linear"), None, [1, 3, 4, 5], 13),
    "lin-half-scales": ((2, 2, 5, 6), dict(mode="linear"), [1, 1, 1.7, 2.3], None, 13),
    "lin-align-corners": ((1, 2, 5, 6), dict(mode="linear", coordinate_transformation_mode="align_corners"), [1, 1, 2, 2], None, 13),
    "lin-asymmetric": ((1, 2, 5, 6), dict(mode="linear", coordinate_transformation_mode="asymmetric"), [1, 1, 2, 1.5], None, 13),
    "lin-pytorch-half-size1": ((1, 2, 5, 6), dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"), None, [1, 2, 1, 9], 13),
    "lin-pytorch-half": ((1, 2, 5, 6), dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"), None, [1, 2, 8, 9], 13),
    "lin-nhwc": ((1, 5, 6, 3), dict(mode="linear"), [1, 2, 1.5, 1], None, 13),
    "lin-2d": ((5, 6), dict(mode="linear"), [1.6, 2], None, 13),
    "lin-5d": ((1, 2, 3, 4, 5), dict(mode="linear"), [1, 1, 2, 1.5, 0.8], None, 13),
    "lin-tf-crop": ((1, 2, 6, 7), dict(mode="linear", coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=0.5), None, [1, 2, 5, 4], 13),
    "lin-opset10": ((1, 2, 4, 5), dict(mode="linear"), [1, 1, 2, 1.5], None, 10),
    "lin-symmetric-19": ((1, 2, 5, 6), dict(mode="linear", coordinate_transformation_mode="half_pixel_symmetric"), None, [1, 2, 8, 4], 19),
    # cubic
    "cub-half-up": ((1, 2, 5, 6), dict(mode="cubic"), [1, 1, 2, 1.5], None, 13),
    "cub-half-down": ((1, 2, 9, 8), dict(mode="cubic"), None, [1, 2, 4, 5], 13),
    "cub-align-a05": ((1, 2, 5, 6), dict(mode="cubic", coordinate_transformation_mode="align_corners", cubic_coeff_a=-0.5), [1, 1, 2, 2], None, 13),
    "cub-exclude": ((1, 2, 5, 6), dict(mode="cubic", exclude_outside=1), [1, 1, 1.6, 2.2], None, 13),
    "cub-asymmetric": ((1, 2, 5, 6), dict(mode="cubic", coordinate_transformation_mode="asymmetric"), [1, 1, 2, 0.7], None, 13),
    "cub-2d": ((6, 5), dict(mode="cubic"), [1.5, 2], None, 13),
    "cub-tf-crop": ((1, 1, 6, 7), dict(mode="cubic", coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=2.0), None, [1, 1, 5, 9], 13),
    # opset 18: axes, keep_aspect_ratio_policy, antialias
    "axes-scales": ((1, 2, 5, 6), dict(mode="linear", axes=[2, 3]), [2, 1.5], None, 18),
    "axes-neg-sizes": ((1, 2, 5, 6), dict(mode="nearest", axes=[-1, -2]), None, [9, 7], 18),
    "policy-not-larger": ((1, 2, 5, 6), dict(mode="linear", axes=[2, 3], keep_aspect_ratio_policy="not_larger"), None, [12, 9], 18),
    "policy-not-smaller": ((1, 2, 5, 6), dict(mode="nearest", axes=[2, 3], keep_aspect_ratio_policy="not_smaller"), None, [12, 9], 18),
    "aa-linear-down": ((1, 2, 13, 11), dict(mode="linear", antialias=1), None, [1, 2, 4, 5], 18),
    "aa-linear-odd": ((1, 2, 9, 11), dict(mode="linear", antialias=1), None, [1, 2, 6, 13], 18),
    "aa-cubic-down": ((1, 2, 13, 11), dict(mode="cubic", antialias=1), None, [1, 2, 4, 5], 18),
    "aa-cubic-exclude": ((1, 2, 13, 11), dict(mode="cubic", antialias=1, exclude_outside=1), None, [1, 2, 5, 4], 18),
    "aa-linear-align": ((1, 2, 12, 10), dict(mode="linear", antialias=1, coordinate_transformation_mode="align_corners"), None, [1, 2, 5, 4], 18),
    "aa-linear-up": ((1, 2, 4, 5), dict(mode="linear", antialias=1), [1, 1, 2, 2.5], None, 18),
}


@pytest.mark.parametrize("case", list(RESIZE_CASES))
def test_resize(case: str) -> None:
    shape, attrs, scales, sizes, opset = RESIZE_CASES[case]
    x = _rand(*shape)
    inits: dict[str, np.ndarray] = {}
    crop = attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize"
    if opset == 10:
        inputs = ["x", "scales"]
        inits["scales"] = _f(*scales)
    else:
        inputs = ["x", "roi" if crop or opset < 13 else "", "scales" if scales is not None or opset < 13 else ""]
        if crop:
            inits["roi"] = np.array([0, 0, 0.1, -0.2] + [1, 1, 0.9, 1.3], np.float32)
        elif opset < 13:
            inits["roi"] = EMPTY
        if scales is not None:
            inits["scales"] = _f(*scales)
        elif opset < 13:
            inits["scales"] = EMPTY
        if sizes is not None:
            inputs.append("sizes")
            inits["sizes"] = _i(*sizes)
    tol = EXACT if attrs.get("mode") == "nearest" else SUM
    parity(node("Resize", inputs, **attrs), {"x": x}, inits=inits, opset=opset, tol=tol)


def test_resize_sizes_computed_from_shape() -> None:
    """As exporters write it: sizes = Concat(Shape(x)[:2], [H, W]) (linear, half_pixel)."""
    nodes = [
        node("Shape", ["x"], ["s"]),
        node("Slice", ["s", "st", "en"], ["nc"]),
        node("Concat", ["nc", "hw"], ["sizes"], axis=0),
        node("Resize", ["x", "", "", "sizes"], mode="linear"),
    ]
    inits = {"st": _i(0), "en": _i(2), "hw": _i(11, 7)}
    parity(nodes, {"x": _rand(2, 3, 5, 6)}, inits=inits, opset=13, tol=SUM)


def test_resize_scales_computed() -> None:
    """Scales computed at run time (Mul of an initializer by a graph input)."""
    nodes = [node("Mul", ["base", "f"], ["scales"]), node("Resize", ["x", "", "scales"], mode="nearest")]
    feeds = {"x": _rand(1, 2, 4, 5), "f": _f(1, 1, 1.5, 2)}
    parity(nodes, feeds, inits={"base": _f(1, 1, 1, 1)}, opset=13, tol=EXACT)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_sizes_graph_input(mode: str) -> None:
    feeds = {"x": _rand(1, 2, 5, 6), "sizes": _i(1, 2, 8, 3)}
    tol = EXACT if mode == "nearest" else SUM
    parity(node("Resize", ["x", "", "", "sizes"], mode=mode), feeds, opset=13, tol=tol)


def test_resize_roi_graph_input_opset11() -> None:
    feeds = {"x": _rand(1, 1, 6, 7), "roi": _f(0, 0, 0.2, 0.1, 1, 1, 0.7, 1.2)}
    attrs = dict(mode="linear", coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=3.0)
    parity(node("Resize", ["x", "roi", "scales", "sizes"], **attrs), feeds, inits={"scales": EMPTY, "sizes": _i(1, 1, 4, 5)}, opset=11, tol=SUM)


def test_resize_same_shape_is_identity() -> None:
    """Scale 1.1 on a dim of 5 keeps 5: onnxruntime copies the input."""
    parity(node("Resize", ["x", "", "scales"], mode="linear"), {"x": _rand(1, 2, 5, 4)}, inits={"scales": _f(1, 1, 1.1, 1)}, opset=13, tol=EXACT)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_integer_data(mode: str) -> None:
    """uint8 images: nearest is exact; linear (NCHW) interpolates in float and truncates."""
    x = np.random.default_rng(0).integers(0, 256, (1, 3, 5, 6)).astype(np.uint8)
    n = node("Resize", ["x", "", "scales"], mode=mode)
    parity(n, {"x": x}, inits={"scales": _f(1, 1, 1.5, 0.7)}, opset=13, out_types={"y": TensorProto.UINT8}, tol=EXACT)


@pytest.mark.parametrize(
    "attrs,scales",
    [
        (dict(mode="linear"), [1, 1, 2, 2]),  # torch kernel
        (dict(mode="linear", coordinate_transformation_mode="asymmetric"), [1, 1, 2, 1.5]),  # gathers
        (dict(mode="cubic", exclude_outside=1), [1, 1, 1.5, 2]),
        (dict(mode="nearest"), [1, 1, 2, 2]),
    ],
)
def test_resize_autograd(attrs: dict, scales: list[float]) -> None:
    module = _module([node("Resize", ["x", "", "scales"], **attrs)], {"x": _rand(1, 2, 4, 5)}, {"scales": _f(*scales)}, opset=13)
    _assert_grad_flows(module, _rand(1, 2, 4, 5))


@pytest.mark.parametrize(
    "attrs,opset",
    [
        (dict(mode="nearest", antialias=1), 18),
        (dict(mode="area"), 13),
        (dict(mode="linear", coordinate_transformation_mode="half_pixel_symmetric"), 18),
        (dict(mode="linear", exclude_outside=1), 13),
        (dict(mode="linear", antialias=1, coordinate_transformation_mode="tf_crop_and_resize"), 18),
    ],
)
def test_resize_unsupported(attrs: dict, opset: int) -> None:
    n = node("Resize", ["x", "", "scales"], **attrs)
    with pytest.raises(UnsupportedOp):
        _module([n], {"x": _rand(1, 1, 2, 2)}, {"scales": _f(1, 1, 2, 2)}, opset=opset)


# --------------------------------------------------------------------------- Pad

PAD_CASES = {
    "constant": ("constant", [0, 1, 2, 0, 0, 2, 1, 3], 1.5, (1, 2, 3, 4)),
    "constant-neg": ("constant", [0, -1, 2, -1, 0, 1, -1, 2], 0.0, (2, 3, 4, 5)),
    "reflect-4d": ("reflect", [0, 0, 2, 3, 0, 0, 1, 2], 0.0, (1, 2, 4, 5)),
    "reflect-axis0": ("reflect", [2, 0, 1, 1], 0.0, (4, 3)),
    "reflect-neg": ("reflect", [0, -2, 0, 3], 0.0, (2, 7)),
    "reflect-longest": ("reflect", [0, 3, 0, 3], 0.0, (2, 4)),  # onnxruntime refuses more than len - 1
    "edge-3d": ("edge", [1, 2, 0, 0, 3, 2], 0.0, (2, 3, 4)),
    "edge-5d": ("edge", [0, 0, 1, 0, 1, 0, 0, 2, 1, 1], 0.0, (1, 2, 3, 2, 4)),
    "edge-neg": ("edge", [-1, 3, 2, -2], 0.0, (3, 5)),
    "edge-long": ("edge", [0, 0, 4, 0, 0, 7, 0, 0], 0.0, (1, 1, 2, 3)),
}


@pytest.mark.parametrize("case", list(PAD_CASES))
@pytest.mark.parametrize("opset", [2, 13])
def test_pad(case: str, opset: int) -> None:
    mode, pads, value, shape = PAD_CASES[case]
    x = _rand(*shape)
    if opset < 11:
        parity(node("Pad", ["x"], mode=mode, pads=pads, value=value), {"x": x}, opset=opset, tol=EXACT)
    else:
        inits = {"pads": _i(*pads), "v": np.array(value, np.float32)}
        parity(node("Pad", ["x", "pads", "v"], mode=mode), {"x": x}, inits=inits, opset=opset, tol=EXACT)


@pytest.mark.parametrize(
    "shape,pads",
    [
        ((3, 4), [1, 2, 3, 0]),
        ((3, 4), [0, 5, 2, 9]),  # longer than the axis: wraps again
        ((3, 4), [-1, 3, 0, -2]),
        ((1, 2, 3, 4), [0, 0, 2, 1, 0, 0, 3, 4]),  # F.pad circular
    ],
)
def test_pad_wrap(shape: tuple[int, ...], pads: list[int]) -> None:
    parity(node("Pad", ["x", "pads"], mode="wrap"), {"x": _rand(*shape)}, inits={"pads": _i(*pads)}, opset=19, tol=EXACT)


@pytest.mark.parametrize("axes", [[1, 3], [-1, 0]])
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_axes(axes: list[int], mode: str) -> None:
    inits = {"pads": _i(1, 2, 2, 0), "v": _f(-3.0), "axes": _i(*axes)}
    parity(node("Pad", ["x", "pads", "v", "axes"], mode=mode), {"x": _rand(3, 4, 2, 5)}, inits=inits, opset=18, tol=EXACT)


def test_pad_runtime_inputs() -> None:
    feeds = {"x": _rand(2, 3, 4), "pads": _i(0, 1, 2, 1, 0, 1), "v": _f(2.5)}
    parity(node("Pad", ["x", "pads", "v"]), feeds, opset=13, tol=EXACT)
    feeds = {"x": _rand(2, 3, 4), "pads": _i(1, -1, 2, 0), "axes": _i(2, 0)}
    parity(node("Pad", ["x", "pads", "", "axes"], mode="reflect"), feeds, opset=18, tol=EXACT)


def test_pad_computed_pads() -> None:
    """pads from Concat of a constant and a graph input (as exporters compute them)."""
    nodes = [node("Concat", ["p0", "p1"], ["pads"], axis=0), node("Pad", ["x", "pads"], mode="edge")]
    parity(nodes, {"x": _rand(2, 3), "p1": _i(0, 2)}, inits={"p0": _i(1, 1)}, opset=13, tol=EXACT)


def test_pad_integer_data() -> None:
    x = np.arange(12, dtype=np.int64).reshape(3, 4)
    inits = {"pads": _i(1, 0, 0, 2), "v": np.array(-5, np.int64)}
    for mode in ("constant", "reflect", "edge"):
        parity(node("Pad", ["x", "pads", "v"], mode=mode), {"x": x}, inits=inits, opset=13, out_types={"y": I64}, tol=EXACT)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_autograd(mode: str) -> None:
    module = _module([node("Pad", ["x", "pads"], mode=mode)], {"x": _rand(1, 2, 4, 5)}, {"pads": _i(0, 0, 1, 2, 0, 0, 2, 1)}, opset=13)
    _assert_grad_flows(module, _rand(1, 2, 4, 5))


def test_pad_unsupported() -> None:
    with pytest.raises(UnsupportedOp, match="wrap"):
        _module([node("Pad", ["x", "pads"], mode="wrap")], {"x": _rand(2, 2)}, {"pads": _i(1, 1, 1, 1)}, opset=18)


# --------------------------------------------------------------------------- generators


@pytest.mark.parametrize(
    "value,out_type",
    [
        (None, TensorProto.FLOAT),
        (helper.make_tensor("v", TensorProto.INT64, [1], [7]), I64),
        (helper.make_tensor("v", TensorProto.FLOAT, [1], [-2.5]), TensorProto.FLOAT),
        (helper.make_tensor("v", TensorProto.INT32, [1], [3]), TensorProto.INT32),
        (helper.make_tensor("v", TensorProto.BOOL, [1], [True]), TensorProto.BOOL),
    ],
)
def test_constant_of_shape(value, out_type: int) -> None:
    attrs = {} if value is None else {"value": value}
    nodes = [node("ConstantOfShape", ["shape"], ["c"], **attrs), node("Identity", ["c"])]
    parity(nodes, {}, inits={"shape": _i(2, 3, 1)}, out_types={"y": out_type}, tol=EXACT)
    nodes = [node("Shape", ["x"], ["s"]), node("ConstantOfShape", ["s"], **attrs)]  # computed shape
    parity(nodes, {"x": _rand(3, 1, 4)}, out_types={"y": out_type}, tol=EXACT)


def test_constant_of_shape_scalar_and_graph_input() -> None:
    parity(node("ConstantOfShape", ["shape"]), {"shape": _i(4, 2)}, tol=EXACT)
    parity([node("ConstantOfShape", ["shape"], ["c"]), node("Identity", ["c"])], {}, inits={"shape": np.zeros(0, np.int64)}, tol=EXACT)


RANGE_CASES = [
    (np.float32(0.1), np.float32(10.3), np.float32(0.7)),
    (np.float32(1), np.float32(-2.5), np.float32(-0.3)),
    (np.float32(3), np.float32(1), np.float32(1)),  # empty
    (np.float64(-1.5), np.float64(2.25), np.float64(0.125)),
    (np.int64(2), np.int64(17), np.int64(3)),
    (np.int32(10), np.int32(-3), np.int32(-4)),
    (np.int16(0), np.int16(5), np.int16(1)),
]


@pytest.mark.parametrize("start,limit,delta", RANGE_CASES)
@pytest.mark.parametrize("runtime", [False, True])
def test_range(start, limit, delta, runtime: bool) -> None:
    vals = {"a": np.array(start), "b": np.array(limit), "c": np.array(delta)}
    out_type = helper.np_dtype_to_tensor_dtype(np.asarray(start).dtype)
    if runtime:
        parity(node("Range", ["a", "b", "c"]), vals, opset=11, out_types={"y": out_type}, tol=EXACT)
    else:
        nodes = [node("Range", ["a", "b", "c"], ["r"]), node("Identity", ["r"])]
        parity(nodes, {}, inits=vals, opset=11, out_types={"y": out_type}, tol=EXACT)


def test_range_from_shape() -> None:
    """Positions as exporters build them: Range(0, Shape(x)[1], 1)."""
    nodes = [
        node("Shape", ["x"], ["s"]),
        node("Gather", ["s", "one"], ["n"], axis=0),
        node("Range", ["zero", "n", "one"], ["r"]),
        node("Cast", ["r"], ["y"], to=TensorProto.FLOAT),
    ]
    inits = {"zero": np.array(0, np.int64), "one": np.array(1, np.int64)}
    parity(nodes, {"x": _rand(2, 9)}, inits=inits, opset=13, tol=EXACT)


@pytest.mark.parametrize("repeats", [[1, 2, 3], [2, 1, 1], [1, 1, 1]])
def test_tile(repeats: list[int]) -> None:
    parity(node("Tile", ["x", "r"]), {"x": _rand(2, 3, 2)}, inits={"r": _i(*repeats)}, opset=13, tol=EXACT)
    parity(node("Tile", ["x", "r"]), {"x": _rand(2, 3, 2), "r": _i(*repeats)}, opset=13, tol=EXACT)


@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("opset", [9, 11])
def test_one_hot(axis: int, opset: int) -> None:
    ids = np.array([[0, 3, -1], [4, -5, 9]], np.int64)  # -1 and -5 wrap, 9 is out of range
    inits = {"depth": np.array(5, np.int64), "values": np.array([-1, 7], np.int64)}
    parity(node("OneHot", ["ids", "depth", "values"], axis=axis), {"ids": ids}, inits=inits, opset=opset, out_types={"y": I64}, tol=EXACT)


def test_one_hot_float_depth_runtime() -> None:
    feeds = {"ids": np.array([1.0, 2.7, 0.0], np.float32), "depth": _f(4.0)}
    parity(node("OneHot", ["ids", "depth", "values"]), feeds, inits={"values": _f(0.25, 2.0)}, opset=11, tol=EXACT)


@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, 0, 2, -1])
def test_trilu(upper: int, k: int | None) -> None:
    inputs, inits = ["x"], {}
    if k is not None:
        inputs.append("k")
        inits["k"] = np.array(k, np.int64)
    parity(node("Trilu", inputs, upper=upper), {"x": _rand(2, 4, 5)}, inits=inits, opset=14, tol=EXACT)


def test_trilu_runtime_k_and_int() -> None:
    parity(node("Trilu", ["x", "k"], upper=0), {"x": _rand(5, 3), "k": np.array(-1, np.int64)}, opset=14, tol=EXACT)
    x = np.arange(12, dtype=np.int32).reshape(3, 4)
    parity(node("Trilu", ["x"]), {"x": x}, opset=14, out_types={"y": TensorProto.INT32}, tol=EXACT)


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("axis", [1, -1, 0])
def test_cumsum(exclusive: int, reverse: int, axis: int) -> None:
    inits = {"axis": np.array(axis, np.int64)}
    parity(node("CumSum", ["x", "axis"], exclusive=exclusive, reverse=reverse), {"x": _rand(3, 4, 5)}, inits=inits, opset=14, tol=SUM)


def test_cumsum_runtime_axis_and_int() -> None:
    x = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    feeds = {"x": x, "axis": np.array(-2, np.int32)}
    parity(node("CumSum", ["x", "axis"], exclusive=1), feeds, opset=14, out_types={"y": TensorProto.INT32}, tol=EXACT)


# --------------------------------------------------------------------------- indexing


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_elements(axis: int) -> None:
    x = _rand(3, 4, 5)
    size = x.shape[axis]
    idx = np.random.default_rng(1).integers(-size, size, (2, 4, 3)).astype(np.int64)
    if axis != 0:
        idx = np.random.default_rng(1).integers(-size, size, (3, 2, 5) if axis == 1 else (3, 4, 2)).astype(np.int64)
    parity(node("GatherElements", ["x", "i"], axis=axis), {"x": x}, inits={"i": idx}, opset=13, tol=EXACT)
    parity(node("GatherElements", ["x", "i"], axis=axis), {"x": x, "i": idx.astype(np.int32)}, opset=13, tol=EXACT)


GATHER_ND_CASES = {
    "k1": ((4, 3, 2), np.array([[1], [-1], [0]]), 0),
    "k2": ((4, 3, 2), np.array([[1, 2], [-1, 0]]), 0),
    "k3-scalar-out": ((4, 3, 2), np.array([[[1, 2, 1]], [[3, -3, 0]]]), 0),
    "batch1": ((2, 4, 3), np.array([[[1], [3]], [[-1], [0]]]), 1),
    "batch1-k2": ((2, 4, 3, 2), np.array([[1, 2], [3, -1]]), 1),
    "batch2": ((2, 3, 4, 2), np.array([[[1], [0]], [[3], [2]], [[-1], [1]]]).reshape(2, 3, 1, 1)[..., 0, :], 2),
}


@pytest.mark.parametrize("case", list(GATHER_ND_CASES))
def test_gather_nd(case: str) -> None:
    shape, idx, batch_dims = GATHER_ND_CASES[case]
    parity(node("GatherND", ["x", "i"], batch_dims=batch_dims), {"x": _rand(*shape)}, inits={"i": idx.astype(np.int64)}, opset=13, tol=EXACT)


def test_gather_nd_opset11_runtime_indices() -> None:
    feeds = {"x": _rand(3, 4, 2), "i": np.array([[2, 1], [0, -1]], np.int64)}
    parity(node("GatherND", ["x", "i"]), feeds, opset=11, tol=EXACT)


SCATTER_CASES = {
    "rows": ((4, 3), np.array([[1], [3]]), (2, 3)),
    "elements": ((4, 3), np.array([[0, 2], [3, -1], [1, 1]]), (3,)),
    "block": ((2, 3, 4), np.array([[[1, 0]], [[0, 2]]]), (2, 1, 4)),
}


@pytest.mark.parametrize("case", list(SCATTER_CASES))
@pytest.mark.parametrize("reduction,opset", [(None, 11), ("none", 16), ("add", 16), ("mul", 16), ("max", 18), ("min", 18)])
def test_scatter_nd(case: str, reduction: str | None, opset: int) -> None:
    shape, idx, upd_shape = SCATTER_CASES[case]
    attrs = {} if reduction is None else {"reduction": reduction}
    inits = {"i": idx.astype(np.int64), "u": _rand(*upd_shape, seed=3)}
    parity(node("ScatterND", ["x", "i", "u"], **attrs), {"x": _rand(*shape)}, inits=inits, opset=opset, tol=EXACT)


@pytest.mark.parametrize("reduction", ["add", "mul", "max"])
def test_scatter_nd_duplicate_indices(reduction: str) -> None:
    inits = {"i": np.array([[1], [3], [1]], np.int64), "u": _rand(3, 2, seed=4)}
    parity(node("ScatterND", ["x", "i", "u"], reduction=reduction), {"x": _rand(4, 2)}, inits=inits, opset=18, tol=ULP)


def test_scatter_nd_runtime_and_grad() -> None:
    feeds = {"x": _rand(4, 3), "i": np.array([[2], [0]], np.int64), "u": _rand(2, 3, seed=2)}
    parity(node("ScatterND", ["x", "i", "u"]), feeds, opset=13, tol=EXACT)
    module = _module([node("ScatterND", ["x", "i", "u"])], feeds, opset=13)
    _assert_grad_flows(module, feeds["x"], feeds["i"], feeds["u"])


def _distinct(*shape: int, seed: int = 0) -> np.ndarray:
    n = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(n).astype(np.float32) * 0.37 - 3).reshape(shape)


@pytest.mark.parametrize("largest", [1, 0])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_topk(largest: int, axis: int) -> None:
    outs = ["v", "i"]
    parity(
        node("TopK", ["x", "k"], outs, axis=axis, largest=largest),
        {"x": _distinct(4, 6, 5)},
        inits={"k": _i(3)},
        opset=11,
        outputs=outs,
        out_types={"i": I64},
        tol=EXACT,
    )


def test_topk_ties_prefer_lower_index() -> None:
    x = np.array([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]], np.float32)
    outs = ["v", "i"]
    for largest in (1, 0):
        n = node("TopK", ["x", "k"], outs, largest=largest)
        parity(n, {"x": x}, inits={"k": _i(5)}, opset=11, outputs=outs, out_types={"i": I64}, tol=EXACT)


def test_topk_opsets_and_runtime_k() -> None:
    outs = ["v", "i"]
    x = _distinct(3, 7)
    parity(node("TopK", ["x"], outs, k=2, axis=1), {"x": x}, opset=1, outputs=outs, out_types={"i": I64}, tol=EXACT)
    parity(node("TopK", ["x", "k"], outs, axis=0), {"x": x}, inits={"k": _i(2)}, opset=10, outputs=outs, out_types={"i": I64}, tol=EXACT)
    parity(node("TopK", ["x", "k"], outs), {"x": x, "k": _i(4)}, opset=11, outputs=outs, out_types={"i": I64}, tol=EXACT)


def test_topk_unsorted_same_set() -> None:
    """sorted=0: onnxruntime returns heap order (unspecified in ONNX); ours is sorted. Same set."""
    x = _distinct(2, 9)
    proto = _make_model([node("TopK", ["x", "k"], ["v", "i"], sorted=0)], {"x": x}, ["v", "i"], {"k": _i(4)}, 11, {"i": I64})
    from tests.models import run_ort

    want_v, want_i = run_ort(proto, {"x": x})
    got_v, got_i = graph_to_module(onnx_ir.from_proto(proto))(torch.from_numpy(x))
    order = np.argsort(want_i, axis=1)
    np.testing.assert_array_equal(np.sort(got_i.numpy(), axis=1), np.take_along_axis(want_i, order, 1))
    np.testing.assert_array_equal(np.take_along_axis(x, got_i.numpy(), 1), got_v.numpy())
    assert set(np.sort(want_v, axis=1).reshape(-1)) == set(np.sort(got_v.numpy(), axis=1).reshape(-1))


def test_topk_gradient() -> None:
    module = _module([node("TopK", ["x", "k"], ["y", "i"])], {"x": _distinct(3, 6)}, {"k": _i(2)}, opset=11, outputs=("y",))
    _assert_grad_flows(module, _distinct(3, 6))


# --------------------------------------------------------------------------- reductions and Einsum

REDUCE_OPS = ["ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp", "ReduceProd"]


@pytest.mark.parametrize("op", REDUCE_OPS)
@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("axes,keepdims", [(None, 1), ([1], 0), ([0, -1], 1)])
def test_reduce_more(op: str, opset: int, axes: list[int] | None, keepdims: int) -> None:
    x = _rand(3, 4, 5) * 0.5 + (1.5 if op == "ReduceLogSum" else 0.0)
    attrs: dict = {"keepdims": keepdims}
    inputs, inits = ["x"], {}
    if axes is not None and opset < 18:
        attrs["axes"] = axes
    elif axes is not None:
        inputs.append("axes")
        inits["axes"] = _i(*axes)
    parity(node(op, inputs, **attrs), {"x": x}, inits=inits, opset=opset, tol=SUM)


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce_more_runtime_axes_and_noop(op: str) -> None:
    """Computed axes; noop_with_empty_axes: onnxruntime reduces each element alone (|x| for L1
    and L2, x*x for SumSquare, log x for LogSum, x for LogSumExp and Prod)."""
    x = _rand(3, 4) + (3.0 if op == "ReduceLogSum" else 0.0)
    parity(node(op, ["x", "axes"], keepdims=0), {"x": _rand(3, 4, 5) + 3.0, "axes": _i(2, 0)}, opset=18, tol=SUM)
    parity(node(op, ["x"], noop_with_empty_axes=1), {"x": x}, opset=18, tol=ULP)
    parity(node(op, ["x", "axes"], noop_with_empty_axes=1), {"x": x}, inits={"axes": np.zeros(0, np.int64)}, opset=18, tol=ULP)


def test_reduce_l2_gradient_at_zero() -> None:
    module = _module([node("ReduceL2", ["x"], axes=[1])], {"x": _rand(2, 3)}, opset=13)
    x = torch.zeros(2, 3, requires_grad=True)
    module(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


EINSUM_CASES = {
    "matmul": ("ij,jk->ik", [(3, 4), (4, 5)]),
    "batch-matmul": ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    "transpose": ("ijk->kji", [(2, 3, 4)]),
    "implicit": ("ij,jk", [(3, 4), (4, 5)]),
    "ellipsis": ("...ij,...jk->...ik", [(2, 2, 3, 4), (2, 2, 4, 3)]),
    "ellipsis-broadcast": ("...ij,...jk->...ik", [(2, 3, 4), (1, 4, 5)]),
    "diag": ("ii->i", [(4, 4)]),
    "sum": ("ij->", [(3, 4)]),
    "outer-spaces": ("i, j -> ij", [(3,), (4,)]),
    "attention": ("bhqd,bhkd->bhqk", [(1, 2, 3, 4), (1, 2, 5, 4)]),
}


@pytest.mark.parametrize("case", list(EINSUM_CASES))
def test_einsum(case: str) -> None:
    equation, shapes = EINSUM_CASES[case]
    names = [f"x{i}" for i in range(len(shapes))]
    feeds = {n: _rand(*s, seed=i) for i, (n, s) in enumerate(zip(names, shapes))}
    parity(node("Einsum", names, equation=equation), feeds, opset=12, tol=SUM)
