"""The golden cases' FileCheck subset: each directive passes where it should and fails where not."""

from __future__ import annotations

import pytest

from qdq_passes.golden import check_lines, read_cases

TEXT = """g (float[2] x) => (float[2] y)
{
  a = Relu (x)
  b = Neg (a)
  y = Add (a, b)
}
f (float x) => (float z)
{
  z = Relu (x)
}
"""


@pytest.mark.parametrize("checks", [
    [("CHECK", "a = Relu"), ("CHECK-NEXT", "b = Neg (a)"), ("CHECK-NEXT", "y = Add")],
    [("CHECK", "b = Neg"), ("CHECK-SAME", "(a)")],
    [("CHECK", "a = Relu"), ("CHECK-NOT", "Sub"), ("CHECK", "y = Add")],
    [("CHECK", "[[V:[a-z]]] = Relu (x)"), ("CHECK", "b = Neg ([[V]])"), ("CHECK", "Add ([[V]], b)")],
    [("CHECK", "{{[a-z]}} = Neg")],
    [("CHECK-LABEL", "g (float[2]"), ("CHECK", "Relu (x)"), ("CHECK-LABEL", "f (float x)"), ("CHECK-NEXT", "{"),
     ("CHECK-NEXT", "z = Relu (x)")],
])
def test_checks_that_hold(checks):
    assert check_lines(checks, TEXT) == []


@pytest.mark.parametrize(("checks", "message"), [
    ([("CHECK", "a = Relu"), ("CHECK-NEXT", "y = Add")], "CHECK-NEXT: 'y = Add' not found on the next line"),
    ([("CHECK", "b = Neg"), ("CHECK-SAME", "Relu")], "CHECK-SAME: 'Relu' not found on the same line"),
    ([("CHECK", "a = Relu"), ("CHECK-NOT", "Neg"), ("CHECK", "y = Add")], "CHECK-NOT: 'Neg' found"),
    ([("CHECK", "y = Add"), ("CHECK", "a = Relu (x)")], "CHECK: 'a = Relu (x)' not found"),
    ([("CHECK", "[[V:[a-z]]] = Neg"), ("CHECK", "y = Add ([[V]]")], "CHECK: 'y = Add ([[V]]' not found"),
    ([("CHECK", "Add ([[W]]")], "is used before it is captured"),
    # a label bounds what the checks before it may match: f's Relu is not g's
    ([("CHECK-LABEL", "g (float[2]"), ("CHECK", "z = Relu"), ("CHECK-LABEL", "f (float x)")], "'z = Relu' not found"),
    ([("CHECK-LABEL", "h (")], "CHECK-LABEL: 'h (' not found"),
])
def test_checks_that_fail_say_why(checks, message):
    failures = check_lines(checks, TEXT)
    assert failures and any(message in f for f in failures), failures


def test_a_file_holds_several_cases_under_one_run_line(tmp_path):
    path = tmp_path / "two.onnxtxt"
    path.write_text("# RUN: qdq-opt %s -p dce\n# CHECK: a\nmodel one\n# -----\n# CHECK: b\nmodel two\n")
    one, two = read_cases(path)
    assert one.run == two.run == ["%s", "-p", "dce"]
    assert (one.checks, two.checks) == ([("CHECK", "a")], [("CHECK", "b")])
    assert two.name.endswith("two.onnxtxt#1") and "model two" in two.text and "model one" not in two.text


@pytest.mark.parametrize(("text", "error"), [
    ("# CHECK: a\nm\n", "needs exactly one '# RUN:' line"),
    ("# RUN: qdq-opt %s -p dce\nm\n", "checks nothing"),
    ("# RUN: qdq-opt %s -p dce\n# SNAPSHOT\nm\n# -----\n# CHECK: x\nm\n", "must be the only case"),
])
def test_malformed_case_files_are_refused(tmp_path, text, error):
    path = tmp_path / "bad.onnxtxt"
    path.write_text(text)
    with pytest.raises(ValueError, match=error):
        read_cases(path)
