"""Pipeline text: parsing, canonical printing, typed options and caret errors."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

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
    assert f" calib={tmp_path / 'c.npz'} " in report.records[1].pass_text
    assert model.metadata_props["qdq_passes.pipeline"] == str(qdq_passes.parse_pipeline(
        pipeline, defaults={"calib": str(tmp_path / "c.npz")}))
