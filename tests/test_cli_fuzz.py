"""qdq-opt under random input: random pipeline text, option values and corrupted small models.

Every outcome must be exit 0, or exit 1/2 with one error line (a pipeline error adds its text and
a caret) and no traceback or "internal error"; the input files are unchanged; nothing is left
beside the output or in the temporary folder. ``main`` runs in-process (a subprocess per example
would cost a second of imports each); a few of the same cases run as a subprocess in test_cli.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import typing
from pathlib import Path

import onnx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from qdq_passes.cli import main
from qdq_passes.infra.options import option_fields
from qdq_passes import registered_passes
from tests.models import conv_relu_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: Passes that train stay cheap: few steps, few samples.
_CHEAP = {"iters": "2", "max-samples": "4", "batch-size": "2"}


def _models() -> dict[str, bytes]:
    return {
        "float": conv_relu_model().SerializeToString(),
        "qdq": (EXAMPLES / "cnn_qdq.onnx").read_bytes(),
        "constants": (EXAMPLES / "cnn_constants_qdq.onnx").read_bytes(),
    }


MODELS = _models()
PASSES = registered_passes()

_tokens = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "none", "nan", "-inf", "1e400", "0x10", "[]", "[1,2]", "[a,b]", '"x y"',
                     "int8", "uint4", "block", "layer", "auto", "on", "off", "quant", "float", "Conv", "x=1"]),
    st.text(alphabet="abc01=-_.[],{} \"", max_size=6),
)


def _plausible(field) -> st.SearchStrategy[str]:  # noqa: ANN001 - an OptionField
    """Values of the option's own type, mostly in range: the passes run, not only the parser."""
    args = typing.get_args(field.type)
    if typing.get_origin(field.type) is typing.Literal:
        return st.sampled_from([str(a) for a in args])
    if field.type is bool:
        return st.sampled_from(["true", "false"])
    if field.type is int:
        return st.integers(-1, 6).map(str)
    if field.type is float:
        return st.sampled_from(["0", "0.5", "1", "0.01", "-1"])
    return st.just(field.format(field.default))


@st.composite
def pass_texts(draw: st.DrawFn) -> str:
    """One pipeline element: a real pass (sometimes misspelt) with options set to plausible or random values."""
    name = draw(st.sampled_from(sorted(PASSES)))
    fields = {f.key: f for f in option_fields(PASSES[name].Options)}
    chosen = draw(st.lists(st.sampled_from(list(fields)), max_size=3, unique=True)) if fields else []
    if draw(st.integers(0, 9)) == 0:
        chosen.append("bogus")
    parts = []
    for key in chosen:
        if key in _CHEAP:
            value = _CHEAP[key]
        elif key in fields and draw(st.integers(0, 5)):
            value = draw(_plausible(fields[key]))
        else:
            value = draw(_tokens)
        parts.append(f"{key}={value}")
    if name == "adaround":
        parts += [f"{k}={v}" for k, v in _CHEAP.items() if k not in chosen]
    if draw(st.integers(0, 19)) == 0:
        name = name[:-1] or "x"
    return f"{name}{{{' '.join(parts)}}}" if parts else name


pipelines = st.one_of(
    st.lists(pass_texts(), min_size=1, max_size=3).map(",".join),
    st.lists(pass_texts(), min_size=1, max_size=3).map(",".join),
    st.lists(pass_texts(), min_size=1, max_size=3).map(",".join),
    st.text(alphabet="abcdefqrst-{}[],= \"", max_size=20),
)


@st.composite
def model_recipes(draw: st.DrawFn) -> tuple:
    """How to make a small real model, intact or corrupted: (name, how, edits). A recipe, not the
    bytes, so a failing example prints in a line."""
    name = draw(st.sampled_from(sorted(MODELS)))
    size = len(MODELS[name])
    how = draw(st.sampled_from(["intact", "intact", "truncate", "overwrite", "splice"]))
    if how == "truncate":
        edits = [draw(st.integers(0, size - 1))]
    elif how == "overwrite":
        edits = draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 255)), min_size=1, max_size=8))
    elif how == "splice":
        edits = [draw(st.integers(0, size - 1)), draw(st.integers(1, 64))]
    else:
        edits = []
    return name, how, edits


def model_bytes(recipe: tuple) -> bytes:
    name, how, edits = recipe
    data = bytearray(MODELS[name])
    if how == "truncate":
        del data[edits[0]:]
    elif how == "overwrite":
        for at, value in edits:
            data[at] = value
    elif how == "splice":
        start, length = edits
        data[start:start] = data[start:start + length]
    return bytes(data)


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def _check_outcome(code: int, err: str) -> None:
    assert "Traceback" not in err and "internal error" not in err, err
    assert code in (0, 1, 2), (code, err)
    if code:
        lines = [ln for ln in err.splitlines() if not ln.startswith("qdq-opt: WARNING:") and
                 not ln.startswith("block ")]
        errors = [ln for ln in lines if ln.startswith("qdq-opt: error:")]
        assert len(errors) == 1, err
        tail = lines[lines.index(errors[0]) + 1:]
        assert tail == [] or (len(tail) == 2 and tail[1].strip() == "^"), err  # a caret block, nothing else


@pytest.fixture(scope="module")
def scratch_tmp():
    """A private temporary folder for the module, so leftovers are visible (onnxruntime's .ses aside)."""
    with tempfile.TemporaryDirectory(prefix="qdq-fuzz-tmp-") as folder:
        old = os.environ.get("TMPDIR"), tempfile.tempdir
        os.environ["TMPDIR"], tempfile.tempdir = folder, folder
        try:
            yield Path(folder)
        finally:
            tempfile.tempdir = old[1]
            if old[0] is None:
                os.environ.pop("TMPDIR")
            else:
                os.environ["TMPDIR"] = old[0]


@_SETTINGS
@given(recipe=model_recipes(), pipeline=pipelines, calib=st.booleans(), text=st.booleans())
def test_random_pipelines_and_corrupted_models_give_one_line_or_success(scratch_tmp, recipe, pipeline, calib, text):
    model = model_bytes(recipe)
    with tempfile.TemporaryDirectory(prefix="qdq-fuzz-", dir=scratch_tmp.parent) as tmp:
        folder = Path(tmp)
        path = folder / "in.onnx"
        if text:  # the same bytes as ONNX text when they still parse: the text reader gets fuzzed too
            try:
                path = folder / "in.onnxtxt"
                path.write_text(onnx.printer.to_text(onnx.load_model_from_string(model)))
            except Exception:  # noqa: BLE001 - not a model: write the bytes as they are
                path.write_bytes(model)
        else:
            path.write_bytes(model)
        (folder / "calib.npz").write_bytes((EXAMPLES / "calib.npz").read_bytes())
        before = _snapshot(folder)
        out = folder / "out.onnx"
        argv = [str(path), "-o", str(out), "-p", pipeline, "--threads", "1"]
        if calib:
            argv += ["--calib", str(folder / "calib.npz")]
        code, err = _run(argv)
        event(f"exit {code}")
        _check_outcome(code, err)
        after = _snapshot(folder)
        expected = dict(before)
        if code == 0:
            assert out.is_file()
            expected.update({k: v for k, v in after.items() if k in ("out.onnx", "out.onnx.data")})
        assert after == expected, (sorted(set(after) ^ set(before)), err)
        assert not [p.name for p in scratch_tmp.iterdir() if p.name != ".ses"]
