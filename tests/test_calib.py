"""Calibration data (qdq_passes.calib): sources, checks against the model, batching, errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnx_ir
import pytest

from qdq_passes.calib import CalibrationData, CalibrationError, load_calibration, parse_batch_axes
from qdq_passes.infra.errors import QdqError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def cnn() -> onnx_ir.Model:
    return onnx_ir.load(EXAMPLES / "cnn_qdq.onnx")


@pytest.fixture()
def two_inputs() -> onnx_ir.Model:
    """Inputs: image float[N,3,4,4] (symbolic batch), ids int64[1,?] (unknown dim), scale float[1] with a default."""
    proto = onnx.parser.parse_model(textwrap.dedent("""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[N,3,4,4] image, int64[1,L] ids, float[1] scale) => (float[N,3,4,4] y, int64[1,L] z)
          <float[1] scale = {2.0}>
        {
          y = Mul (image, scale)
          z = Identity (ids)
        }
    """))
    return onnx_ir.from_proto(proto)


def _feed(n: int = 4, *, length: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.standard_normal((n, 3, 4, 4)).astype(np.float32),
        "ids": rng.integers(0, 9, (n, length)).astype(np.int64),
    }


# --------------------------------------------------------------------------- sources


def test_bundled_example(cnn):
    data = load_calibration(EXAMPLES / "calib.npz", cnn)
    assert data.num_samples == len(data) == 32
    assert list(data.inputs) == ["input"] and data.inputs["input"].shape == (32, 3, 32, 32)
    with np.load(EXAMPLES / "calib.npz") as archive:
        np.testing.assert_array_equal(data.inputs["input"], archive["input"])
    batches = list(data.batches(10))
    assert [b["input"].shape[0] for b in batches] == [10, 10, 10, 2]
    assert [b["input"].shape[0] for b in data.batches(10, drop_last=True)] == [10, 10, 10]
    np.testing.assert_array_equal(np.concatenate([b["input"] for b in batches]), data.inputs["input"])


def test_bundled_example_as_a_str_path_with_max_samples(cnn):
    data = load_calibration(str(EXAMPLES / "calib.npz"), cnn, max_samples=5)
    assert data.num_samples == 5


def test_batches_feed_onnxruntime(cnn):
    import onnxruntime as ort

    data = load_calibration(EXAMPLES / "calib.npz", cnn, max_samples=2)
    session = ort.InferenceSession(str(EXAMPLES / "cnn_qdq.onnx"), providers=["CPUExecutionProvider"])
    for feed in data.batches(1):  # the example's input has a fixed batch of 1
        [logits] = session.run(None, feed)
        assert logits.shape == (1, 10)


def test_folder_sorted_by_name_and_concatenated(two_inputs, tmp_path):
    np.savez(tmp_path / "b.npz", **_feed(2, seed=2))
    np.savez(tmp_path / "a.npz", **_feed(3, seed=1))
    (tmp_path / "notes.txt").write_text("ignored")
    data = load_calibration(tmp_path, two_inputs)
    assert data.num_samples == 5
    np.testing.assert_array_equal(data.inputs["image"][:3], _feed(3, seed=1)["image"])
    np.testing.assert_array_equal(data.inputs["image"][3:], _feed(2, seed=2)["image"])
    assert load_calibration(tmp_path, two_inputs, max_samples=4).num_samples == 4


def test_iterable_of_dicts_and_a_single_dict(two_inputs):
    data = load_calibration((_feed(2, seed=s) for s in range(3)), two_inputs)
    assert data.num_samples == 6 and set(data.inputs) == {"image", "ids"}
    assert load_calibration(_feed(4), two_inputs).num_samples == 4
    again = load_calibration(data, two_inputs, max_samples=1)
    assert isinstance(again, CalibrationData) and again.num_samples == 1


def test_optional_input_with_a_default_is_checked_when_given(two_inputs):
    feed = _feed(2) | {"scale": np.ones(2, np.float32)}
    assert set(load_calibration(feed, two_inputs).inputs) == {"image", "ids", "scale"}
    with pytest.raises(CalibrationError, match="'scale' is float64"):
        load_calibration(_feed(2) | {"scale": np.ones(2)}, two_inputs)


def test_symbolic_dims_accept_any_size(two_inputs):
    assert load_calibration(_feed(3, length=11), two_inputs).inputs["ids"].shape == (3, 11)


# --------------------------------------------------------------------------- errors


def _error(source, model, **kwargs) -> str:
    with pytest.raises(CalibrationError) as info:
        load_calibration(source, model, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert isinstance(info.value, QdqError)
    return message


def test_missing_file_and_folder(cnn, tmp_path):
    assert _error(tmp_path / "nope.npz", cnn) == f"{tmp_path / 'nope.npz'}: no such file or folder"
    assert _error(tmp_path, cnn) == f"{tmp_path}: the folder holds no .npz files"


def test_not_an_npz(cnn, tmp_path):
    text = tmp_path / "calib.npz"
    text.write_text("hello")
    assert _error(text, cnn).startswith(f"{text}: not an .npz archive")
    npy = tmp_path / "calib.npy"
    np.save(npy, np.zeros((1, 3, 32, 32), np.float32))
    assert _error(npy, cnn).startswith(f"{npy}: a .npy array")
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes((EXAMPLES / "calib.npz").read_bytes()[:5000])
    assert str(truncated) in _error(truncated, cnn)


def test_pickled_objects_are_refused(cnn, tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, input=np.array([{"a": 1}], dtype=object))
    assert _error(path, cnn).startswith(f"{path}: unreadable .npz archive")


def test_missing_input_names_the_file(cnn, tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, other=np.zeros((1, 3, 32, 32), np.float32))
    message = _error(path, cnn)
    assert message.startswith(f"{path}: ")  # the unknown name is reported first, with the inputs
    np.savez(path)
    assert _error(path, cnn) == f"{path}: input 'input' is missing (has: nothing)"


def test_unknown_input_with_suggestion(cnn, tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, inputs=np.zeros((1, 3, 32, 32), np.float32))
    assert _error(path, cnn) == f"{path}: unknown input 'inputs'; did you mean 'input'?"
    np.savez(path, input=np.zeros((1, 3, 32, 32), np.float32), zzz=np.zeros(1))
    assert _error(path, cnn) == f"{path}: unknown input 'zzz' (graph inputs: input)"


def test_wrong_dtype(cnn, tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, input=np.zeros((2, 3, 32, 32), np.float64))
    assert _error(path, cnn) == f"{path}: input 'input' is float64, the model expects float32"


def test_wrong_shape(cnn, tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, input=np.zeros((2, 3, 16, 32), np.float32))
    assert _error(path, cnn) == (
        f"{path}: input 'input' has shape [2, 3, 16, 32], the model expects [1, 3, 32, 32] (axis 0 is the batch and may differ)"
    )
    np.savez(path, input=np.zeros((3, 32, 32), np.float32))
    assert "expects rank 4 [1, 3, 32, 32]" in _error(path, cnn)
    np.savez(path, input=np.float32(1.0))
    assert "is a scalar" in _error(path, cnn)


def test_inconsistent_batch_sizes(two_inputs):
    feed = _feed(3)
    feed["ids"] = feed["ids"][:2]
    assert _error(feed, two_inputs) == "calibration data: input 'ids' has 2 samples but 'image' has 3"
    assert _error([_feed(2), feed], two_inputs).startswith("calibration item 1: input 'ids' has 2 samples")


def test_zero_samples(cnn, tmp_path):
    path = tmp_path / "empty.npz"
    np.savez(path, input=np.zeros((0, 3, 32, 32), np.float32))
    assert _error(path, cnn) == f"{path}: contains no samples"
    assert _error([], cnn) == "calibration data: contains no samples"


def test_bad_items_and_sources(cnn):
    assert _error([np.zeros(3)], cnn) == "calibration item 0: a ndarray, expected a dict of input name -> array"
    assert "not int" in _error(5, cnn)
    with pytest.raises(ValueError):
        load_calibration(EXAMPLES / "calib.npz", cnn, max_samples=0)
    with pytest.raises(ValueError):
        next(load_calibration(EXAMPLES / "calib.npz", cnn).batches(0))


def _recurrent_model() -> onnx_ir.Model:
    """Inputs as silero-vad has them: audio [B, T], a state [2, B, 4], a scalar sample rate."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "vad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "B", 4]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 8])])
    return onnx_ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_batch_axes_move_the_batch_to_axis_0_and_back():
    model = _recurrent_model()
    x = np.arange(5 * 8, dtype=np.float32).reshape(5, 8)
    state = np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32)
    feed = {"x": x, "state": state, "sr": np.array(16000, np.int64)}
    data = load_calibration(feed, model, batch_axes=parse_batch_axes(["state=1", "sr=none"]))
    assert data.num_samples == 5 and data.batch_axes == {"x": 0, "state": 1, "sr": None}
    np.testing.assert_array_equal(data.inputs["state"][3], state[:, 3])
    assert data.inputs["sr"].shape == (5,) and data.inputs["sr"].strides == (0,)  # one value, not copied
    first, second = data.batches(3)
    assert first["state"].shape == (2, 3, 4) and first["sr"].shape == () and second["x"].shape == (2, 8)
    np.testing.assert_array_equal(second["state"], state[:, 3:])
    again = load_calibration(data, model, max_samples=2)  # a CalibrationData keeps its layout
    assert again.batch_axes == data.batch_axes and again.inputs["state"].shape == (2, 2, 4)


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        (["state=1"], r"input 'sr' is a scalar; samples go on axis 0 \(or declare it without batch axis: --calib-batch-axis sr=none\)"),
        ([], r"input 'state' has 2 samples but 'x' has 5"),
        (["sr=none", "state=0"], r"input 'state' has 2 samples but 'x' has 5"),
        (["sr=none", "state=3"], r"batch axis 3 of input 'state' is out of range for its rank 3"),
        (["sr=none", "state=1", "stat=1"], r"batch axis of unknown input 'stat'; did you mean 'state'\?"),
    ],
)
def test_batch_axis_errors_name_the_input(axes, message):
    feed = {"x": np.zeros((5, 8), np.float32), "state": np.zeros((2, 5, 4), np.float32), "sr": np.array(16000, np.int64)}
    with pytest.raises(CalibrationError, match=message):
        load_calibration(feed, _recurrent_model(), batch_axes=parse_batch_axes(axes))


def test_parse_batch_axes_refuses_bad_entries():
    with pytest.raises(ValueError, match=r"batch axis 'state': expected NAME=AXIS"):
        parse_batch_axes(["state"])
    with pytest.raises(ValueError, match=r"AXIS must be an integer or 'none', got 'one'"):
        parse_batch_axes(["state=one"])


def test_nan_or_inf_is_refused_naming_the_input_and_sample(tmp_path):
    model = _recurrent_model()
    x = np.zeros((5, 8), np.float32)
    x[3, 2] = np.nan
    feed = {"x": x, "state": np.zeros((2, 5, 4), np.float32), "sr": np.array(16000, np.int64)}
    path = tmp_path / "calib.npz"
    np.savez(path, **feed)
    with pytest.raises(CalibrationError, match=rf"{path}: input 'x' holds NaN or Inf in sample 3 \(1 of 5 samples\)"):
        load_calibration(path, model, batch_axes={"state": 1, "sr": None})
    feed["x"][3, 2] = 0
    feed["state"][1, 4, 0] = np.inf  # batch axis 1: sample 4
    with pytest.raises(CalibrationError, match=r"input 'state' holds NaN or Inf in sample 4"):
        load_calibration(feed, model, batch_axes={"state": 1, "sr": None})
