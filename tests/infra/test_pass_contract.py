"""The contract every registered pass keeps (names, options, idempotence, honest ``modified``)."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path

import onnx
import onnx_ir
import pytest

from qdq_passes import parse_pipeline, registered_passes
from qdq_passes.infra.options import option_fields
from qdq_passes.infra.pass_base import QdqPass
from qdq_passes.golden import find_cases
from qdq_passes.ir.printer import print_model
from tests.models import constant_weights_model, ort_quantize, random_inputs

PASSES = registered_passes()


@pytest.fixture(scope="module")
def qdq_model(tmp_path_factory) -> onnx.ModelProto:
    """An onnxruntime-made QDQ model whose float source keeps weights in Constant nodes."""
    return ort_quantize(constant_weights_model(), tmp_path_factory.mktemp("contract"),
                        extra_options={"AddQDQPairToWeight": True})


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> str:
    import numpy as np

    path = tmp_path_factory.mktemp("contract-calib") / "calib.npz"
    np.savez(path, **{k: np.concatenate([f[k] for f in random_inputs(constant_weights_model(), n=8)])
                      for k in random_inputs(constant_weights_model(), n=1)[0]})
    return str(path)


def _prepared(name: str, qdq_model: onnx.ModelProto, calib: str) -> tuple[onnx_ir.Model, QdqPass]:
    """The model and pass to run: the QDQ model, or for passes whose precondition it does not meet,
    what the pipeline before them makes (``adaround`` after ``insert-quantizers{weights=adaround}``)."""
    model = onnx_ir.from_proto(onnx.load_model_from_string(qdq_model.SerializeToString()))
    if name == "adaround":
        PASSES["insert-quantizers"](weights="adaround")(model)
        return model, PASSES[name](calib=calib, iters=5, threads=1)
    return model, PASSES[name]()


def test_names_are_unique_kebab_case_with_summaries():
    assert len(PASSES) == len({cls.argument for cls in PASSES.values()})
    for name, cls in PASSES.items():
        assert re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", name)
        assert cls.summary and "\n" not in cls.summary
        assert cls.__doc__, f"{name} has no docstring"
        assert dataclasses.is_dataclass(cls.Options) and cls.Options.__dataclass_params__.frozen
        for field in option_fields(cls.Options):
            assert field.help, f"{name}: option {field.key} has no help"


def _non_default(field) -> object:
    """A valid value different from the field's default, to exercise printing and parsing."""
    typ, default = field.type, field.default
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if typ is bool:
        return not default
    if typ is int:
        return default + 1
    if typ is float:
        return default * 2 + 0.125
    if typ is str:
        return "cuda:1" if field.key == "device" else default + "_x"
    if origin is typing.Literal:
        return next(a for a in args if a != default)
    if origin is tuple:
        return tuple(default) + tuple(default[-1:]) if args[-1] is Ellipsis and default else default
    return default


@pytest.mark.parametrize("name", list(PASSES))
def test_options_round_trip_through_pipeline_text(name):
    cls: type[QdqPass] = PASSES[name]
    default = cls()
    assert str(parse_pipeline(str(default)).passes[0]) == str(default)
    changed = {f.name: _non_default(f) for f in option_fields(cls.Options)}
    configured = cls(cls.Options(**changed))
    reparsed = parse_pipeline(str(configured)).passes[0]
    assert reparsed.options == configured.options
    assert str(reparsed) == str(configured)


#: Analysis passes: they never modify a model.
NEVER_MODIFY = {"check", "print-blocks"}
GOLDEN = Path(__file__).resolve().parents[1] / "passes"


def _first_run(name: str, qdq_model: onnx.ModelProto, calib: str) -> tuple[onnx_ir.Model, QdqPass, bool]:
    """The model after a pass's first run, the pass, and whether that run modified it: on the
    first golden case of the pass that it modifies (the first pass of the case's RUN line), or,
    for ``adaround`` (whose golden cases have no calibration data), on the shared fixture."""
    if name == "adaround":
        model, pass_ = _prepared(name, qdq_model, calib)
        return model, pass_, pass_(model).modified
    for case in find_cases(GOLDEN / name):
        if case.expect_failure or "-p" not in case.run:
            continue
        passes = parse_pipeline(case.run[case.run.index("-p") + 1]).passes
        if passes[0].argument != name or getattr(passes[0].options, "inputs", ()):
            continue  # (fold-constants{inputs=...} removes the inputs it binds: a second run names none)
        model = case.model()
        modified = passes[0](model).modified
        if modified or name in NEVER_MODIFY:
            return model, passes[0], modified
    raise AssertionError(f"{name}: no golden case runs the pass alone and is modified by it")


@pytest.mark.parametrize("name", list(PASSES))
def test_second_run_is_a_no_op(name, qdq_model, calib):
    model, pass_, modified = _first_run(name, qdq_model, calib)
    assert modified is (name not in NEVER_MODIFY), f"{name}: the first run must change its input"
    text = print_model(model)
    result = pass_(model)
    assert result.modified is False, f"{name} reported a change on its second run"
    assert print_model(model) == text


@pytest.mark.parametrize("name", list(PASSES))
def test_runs_in_a_plain_onnx_ir_pass_manager(name, qdq_model, calib):
    model, pass_ = _prepared(name, qdq_model, calib)
    manager = onnx_ir.passes.PassManager([pass_])
    result = manager(model)
    assert result.model is model


def _bad_values(field) -> list[str]:
    """Pipeline spellings of values ``field`` must refuse: the wrong type, and just past each bound."""
    typ = field.type
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        typ = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin is tuple:
        item = args[0]
        bad = ["[[a]]"]
        if args[-1] is not Ellipsis:
            bad.append("[" + ",".join(["1"] * (len(args) + 1)) + "]")  # one item too many
        return bad + [f"[{v}]" for v in _past_bounds(item, field.bounds)]
    if typ is bool:
        return ["maybe"]
    if typ is str:
        return ["[a,b]"]
    if origin is typing.Literal:
        return ["bogus"]
    return ["x", *_past_bounds(typ, field.bounds)]


def _past_bounds(typ, bounds: dict) -> list[str]:  # noqa: ANN001
    """A value just outside each bound of a number."""
    step = 1 if typ is int else 0.5
    out = []
    for kind, bound in bounds.items():
        value = bound - step if kind == "at_least" else bound + step if kind == "at_most" else bound
        out.append(str(int(value)) if typ is int else repr(float(value)))
    if typ is float:
        out.append("nan")
    return out


#: Values refused by what they mean, not their type.
_SEMANTIC = {("adaround", "device"): ["gpu", "cuda:x"], ("adaround", "calib-batch-axis"): ["[x]"],
             ("quantize", "calib-batch-axis"): ["[x]"]}

_BAD_CASES = [(name, field.key, bad) for name, cls in PASSES.items() for field in option_fields(cls.Options)
              for bad in _bad_values(field) + _SEMANTIC.get((name, field.key), [])]


def test_every_option_has_bad_values_to_try():
    keys = {(name, field.key) for name, cls in PASSES.items() for field in option_fields(cls.Options)}
    assert keys == {(name, key) for name, key, _ in _BAD_CASES}


@pytest.mark.parametrize(("name", "key", "bad"), _BAD_CASES, ids=[f"{n}-{k}={b}" for n, k, b in _BAD_CASES])
def test_a_bad_option_value_exits_2_when_the_pipeline_is_parsed(name, key, bad, tmp_path, capsys):
    """Refused before any model is read (the input does not even exist): exit 2, the first line
    names the option as the pipeline spells it."""
    from qdq_passes.cli import main

    missing, out = tmp_path / "does-not-exist.onnx", tmp_path / "out.onnx"
    code = main([str(missing), "-o", str(out), "-p", f"{name}{{{key}={bad}}}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"'{key}'" in err.splitlines()[0] or f"{key}=" in err.splitlines()[0], err
    assert "does-not-exist" not in err and not out.exists()
