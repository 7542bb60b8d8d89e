"""The contract every registered pass keeps (names, options, idempotence, honest ``modified``)."""

from __future__ import annotations

import dataclasses
import re
import typing

import onnx
import onnx_ir
import pytest

from qdq_passes import parse_pipeline, registered_passes
from qdq_passes.infra.options import option_fields
from qdq_passes.infra.pass_base import QdqPass
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
        return default + "_x"
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


@pytest.mark.parametrize("name", list(PASSES))
def test_second_run_is_a_no_op(name, qdq_model, calib):
    model, pass_ = _prepared(name, qdq_model, calib)
    pass_(model)
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
