"""Pipeline text: parsing, canonical printing, typed options and caret errors."""

from __future__ import annotations

import dataclasses
from typing import Literal

import onnx_ir
import pytest

import qdq_passes
from qdq_passes import parse_pipeline
from qdq_passes.infra import registry
from qdq_passes.infra.errors import OptionError, PipelineSyntaxError, UnknownPassError
from qdq_passes.infra.options import option
from qdq_passes.infra.pass_base import QdqPass


@dataclasses.dataclass(frozen=True)
class _AllTypes:
    flag: bool = option(False, "a boolean")
    count: int = option(3, "an integer")
    rate: float = option(0.5, "a float")
    mode: Literal["block", "layer"] = option("block", "a choice")
    label: str = option("x", "a string")
    betas: tuple[float, ...] = option((20.0, 2.0), "a list of floats")
    pair: tuple[int, str] = option((1, "a"), "a fixed pair")
    limit: int | None = option(None, "optional integer")


class _AllTypesPass(QdqPass):
    argument = "all-types"
    summary = "test pass with every option type"
    Options = _AllTypes

    def call(self, model):  # pragma: no cover - never run
        raise AssertionError


@pytest.fixture
def all_types_pass():
    registry.register_pass(_AllTypesPass)
    yield _AllTypesPass
    registry._PASSES.pop("all-types")


def test_canonical_form_spells_every_option(all_types_pass):
    p = parse_pipeline("all-types")
    assert str(p) == 'all-types{flag=false count=3 rate=0.5 mode=block label=x betas=[20.0,2.0] pair=[1,a] limit=none}'


def test_options_are_typed(all_types_pass):
    p = parse_pipeline('all-types{flag count=0x10 rate=1e-3 mode=layer label="a b,c" betas=[1, 2.5] pair=[7,q] limit=12}')
    o = p.passes[0].options
    assert o == _AllTypes(True, 16, 1e-3, "layer", "a b,c", (1.0, 2.5), (7, "q"), 12)


def test_round_trip(all_types_pass):
    text = 'dce, all-types{ rate=2 label="with \\"quote\\"" betas=[] }  ,topo-sort'
    first = parse_pipeline(text)
    again = parse_pipeline(str(first))
    assert str(again) == str(first)
    assert again.passes[1].options.label == 'with "quote"'
    assert again.passes[1].options.betas == ()


def test_keyword_construction_matches_text(all_types_pass):
    assert str(_AllTypesPass(rate=0.25, mode="layer")) == str(parse_pipeline("all-types{rate=0.25 mode=layer}"))


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("dce,,topo-sort", 4, "expected a pass name"),
        ("", 0, "empty pipeline"),
        ("   ", 3, "empty pipeline"),
        ("dce,", 4, "expected a pass name"),
        ("dce topo-sort", 4, "expected ','"),
        ("check{full-check=true", 21, "unterminated options"),
        ("check{full-check=true, x=1}", 21, "separated by spaces"),
        ("check{full-check=}", 17, "expected a value"),
        ('check{full-check="abc}', 17, "unterminated string"),
        ("check{=1}", 6, "expected an option name"),
    ],
)
def test_syntax_errors_point_at_the_column(text, column, message):
    with pytest.raises(PipelineSyntaxError) as info:
        parse_pipeline(text)
    err = info.value
    assert message in err.message
    assert err.column == column
    lines = str(err).splitlines()
    assert lines[1] == "  " + text
    assert lines[2] == "  " + " " * column + "^"


def test_unknown_pass_suggests_close_match():
    with pytest.raises(UnknownPassError, match="unknown pass 'topo-srot'; did you mean 'topo-sort'") as info:
        parse_pipeline("dce,topo-srot")
    assert str(info.value).splitlines()[-1] == "      ^"


def test_unknown_option_suggests_close_match():
    with pytest.raises(OptionError, match="check: unknown option 'full-chek'; did you mean 'full-check'"):
        parse_pipeline("check{full-chek=true}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("all-types{count=abc}", "option 'count' expects int, got 'abc'"),
        ("all-types{rate=[1,2]}", "option 'rate' expects float"),
        ("all-types{mode=blok}", "did you mean 'block'"),
        ("all-types{flag=maybe}", "option 'flag' expects bool"),
        ("all-types{pair=[1,2,3]}", "expected 2 values"),
        ("all-types{count}", "option 'count' needs a value"),
    ],
)
def test_wrong_value_types(all_types_pass, text, message):
    with pytest.raises(OptionError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_pipeline(text)


def test_duplicate_option_key():
    with pytest.raises(PipelineSyntaxError, match="given twice"):
        parse_pipeline("check{full-check=true full-check=false}")


def test_defaults_fill_declared_options_only(all_types_pass):
    p = parse_pipeline("dce,all-types{count=5},all-types", defaults={"count": "9", "label": "cal.npz", "unknown": "x"})
    assert p.passes[1].options.count == 5
    assert p.passes[1].options.label == "cal.npz"
    assert p.passes[2].options.count == 9
    assert str(p.passes[0]) == "dce"


def test_run_api_fills_calib_defaults(tmp_path):
    import qdq_passes
    from tests.models import conv_relu_model

    pipeline = "dce,quantize{acts=none}"  # weights only: the calibration file is not read
    model, report = qdq_passes.run_with_report(conv_relu_model(), pipeline, calib=tmp_path / "c.npz")
    assert f" calib={tmp_path / 'c.npz'} " in report.records[2].pass_text
    # quantize's prerequisite is a step of its own in the report
    assert [r.argument for r in report.records] == ["dce", "constants-to-initializers (for quantize)", "quantize"]
    assert model.metadata_props["qdq_passes.pipeline"] == str(qdq_passes.parse_pipeline(
        pipeline, defaults={"calib": str(tmp_path / "c.npz")}))


# --------------------------------------------------------------------------- values checked at parse time


def _numeric_options() -> list[tuple[str, str, str]]:
    """(pass, option key, 'float' or 'int') for every number option of every registered pass."""
    import typing

    from qdq_passes.infra.options import option_fields

    found = []
    for name, cls in qdq_passes.registered_passes().items():
        for field in option_fields(cls.Options):
            args = typing.get_args(field.type) or (field.type,)
            kinds = {a for a in args if a in (int, float)}
            if kinds:
                found.append((name, field.key, "float" if float in kinds else "int"))
    return found


@pytest.mark.parametrize(("name", "key", "kind"), _numeric_options())
def test_every_number_option_refuses_non_finite_and_oversized_values(name, key, kind):
    """NaN and infinities in a float option, an int past 64 bits: refused when the text is parsed."""
    bad = ["nan", "inf", "-inf"] if kind == "float" else [str(2**70), str(-(2**70))]
    for value in bad:
        with pytest.raises(OptionError, match=f"{name}: option '{key}'") as info:
            parse_pipeline(f"{name}{{{key}={value}}}")
        caret = str(info.value).splitlines()[-1]
        assert caret.index("^") == 2 + len(name) + 1, str(info.value)  # under the option, not the pass


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("adaround{lr=0}", "option 'lr' must be greater than 0, got 0.0"),
        ("adaround{iters=-1}", "option 'iters' must be at least 0, got -1"),
        ("adaround{batch_size=0}", "option 'batch-size' must be at least 1, got 0"),  # named as pipelines spell it
        ("adaround{holdout=1}", "option 'holdout' must be less than 1, got 1.0"),
        ("adaround{shrink=[0.5,1.5]}", "option 'shrink' must be at most 1, got 1.5"),
        ("adaround{beta=[20,0]}", "option 'beta' must be greater than 0, got 0.0"),
        ("adaround{seed=-3}", "option 'seed' must be at least 0, got -3"),
        ("adaround{min-ops=5}", "option 'min-ops' must be at most max-ops (4), got 5"),
        ("adaround{calib-batch-axis=[x]}", "option 'calib-batch-axis': batch axis 'x': expected NAME=AXIS"),
        ("quantize{op-types=[Relu]}", "option 'op-types': 'Relu' is not supported"),
        ("quantize{block-size=0}", "option 'block-size' must be at least 1, got 0"),
        ("lower-qdq{opset=9}", "option 'opset' must be at least 10, got 9"),
        ("fold-constants{inputs=[sr]}", "option 'inputs': entry 'sr': expected NAME=VALUE"),
    ],
)
def test_out_of_range_values_are_refused_when_parsed(text, message):
    with pytest.raises(OptionError) as info:
        parse_pipeline(f"dce,{text}")
    first = str(info.value).splitlines()[0]
    assert message in first, first
    assert "Options(" not in first  # never the whole options object
    key = message.split("'")[1]
    caret = str(info.value).splitlines()[-1].index("^") - 2
    assert f"dce,{text}"[caret:].replace("_", "-").startswith(key), str(info.value)


def test_options_built_in_python_are_checked_the_same_way():
    from qdq_passes.adaround import AdaroundOptions, AdaroundPass

    with pytest.raises(OptionError, match="option 'lr' must be a finite number"):
        AdaroundOptions(lr=float("nan"))
    with pytest.raises(OptionError, match="adaround: option 'warm-start' must be at most 1"):
        AdaroundPass(warm_start=2.0)
    assert AdaroundPass(iters=10**8).options.iters == 10**8  # large, not a memory hazard: schedules are lazy


def test_plain_dataclass_options_of_an_out_of_tree_pass_get_the_value_checks(all_types_pass):
    with pytest.raises(OptionError, match="all-types: option 'rate' expects float, got 'nan' .not a finite number."):
        parse_pipeline("all-types{rate=nan}")
    with pytest.raises(OptionError, match="all-types: option 'count' does not fit in a 64-bit integer"):
        parse_pipeline(f"all-types{{count={2**64}}}")


def test_prerequisites_are_steps_of_their_own(tmp_path):
    """A pass's prerequisites run through the manager: timed, printed and reported under
    ``name (for pass)``, and the canonical pipeline (the provenance stamp) stays the user's."""
    import io

    from qdq_passes.infra.manager import PassManager
    from tests.models import conv_relu_model

    stream = io.StringIO()
    pipeline = parse_pipeline("quantize{acts=none}")
    model = onnx_ir.from_proto(conv_relu_model())
    report = PassManager(pipeline, print_ir_after_all=True, stream=stream).run(model)
    assert [r.argument for r in report.records] == ["constants-to-initializers (for quantize)", "quantize"]
    assert "IR Dump After constants-to-initializers (for quantize)" in stream.getvalue()
    assert "constants-to-initializers (for quantize)" in report.timing_table()
    assert "'constants-to-initializers (for quantize)'  (modified: no)" in report.statistics_table()
    assert str(pipeline) == str(parse_pipeline("quantize{acts=none}"))


def test_a_pass_called_alone_runs_its_prerequisites_first():
    """Outside a manager the pass runs its prerequisites itself; ``modified`` counts theirs."""
    from tests.models import constant_weights_model

    model = onnx_ir.from_proto(constant_weights_model())
    assert any(n.op_type == "Constant" for n in model.graph)
    assert qdq_passes.get_pass("quantize")(acts="none")(model).modified
    assert not any(n.op_type == "Constant" for n in model.graph)  # lifted by constants-to-initializers
