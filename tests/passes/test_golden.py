"""Run every golden case under tests/passes (tools/update_goldens.py refreshes the snapshots)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qdq_passes.golden import GoldenCase, check_lines, find_cases, run_case

CASES = find_cases(Path(__file__).parent)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden_case(case: GoldenCase) -> None:
    result = run_case(case)
    if case.expect_failure:
        assert result.exit_code != 0, "expected a failure, got exit 0"
    else:
        assert result.exit_code == 0, result.text
    failures = check_lines(case.checks, result.text)
    failures += [f"stderr {f}" for f in check_lines(case.err_checks, result.stderr)]
    assert not failures, "\n".join(failures) + "\n--- output ---\n" + result.text
    if case.snapshot:
        assert case.expected_path.exists(), f"no snapshot {case.expected_path.name}: run tools/update_goldens.py"
        assert result.text == case.expected_path.read_text(encoding="utf-8"), (
            f"output differs from {case.expected_path.name}; if intended, run tools/update_goldens.py and review "
            "the diff")
    else:
        assert not case.expected_path.exists(), f"{case.expected_path.name}: a snapshot without # SNAPSHOT"


def test_every_pass_has_golden_cases() -> None:
    from qdq_passes import registered_passes

    folders = {c.path.parent.name for c in CASES}
    missing = sorted(set(registered_passes()) - folders)
    assert not missing, f"passes without golden cases in tests/passes/: {missing}"
