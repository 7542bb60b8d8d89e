#!/usr/bin/env python3
"""Regenerate golden outputs: ``tools/update_goldens.py [CASE_OR_FOLDER ...]`` (default: all of tests/passes).

Writes the ``.expected`` snapshot of each ``# SNAPSHOT`` case from what the tool prints now (review
the diff before committing) and reports, for every case, whether its checks hold.
"""

from __future__ import annotations

import sys
from pathlib import Path

from qdq_passes.golden import check_lines, find_cases, read_cases, run_case

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    targets = [Path(a) for a in argv] or [ROOT / "tests" / "passes"]
    cases = [c for t in targets for c in (read_cases(t) if t.is_file() else find_cases(t))]
    bad = 0
    for case in cases:
        result = run_case(case)
        ok = (result.exit_code != 0) if case.expect_failure else (result.exit_code == 0)
        failures = check_lines(case.checks, result.text)
        failures += [f"stderr {f}" for f in check_lines(case.err_checks, result.stderr)]
        if case.snapshot:
            old = case.expected_path.read_text(encoding="utf-8") if case.expected_path.exists() else None
            if ok:
                case.expected_path.write_text(result.text, encoding="utf-8")
            state = "unchanged" if old == result.text else ("written" if ok else "NOT written")
        else:
            state = "checks hold" if ok and not failures else "FAILS"
        print(f"{case.name}: {state}" + ("" if ok else f" (exit {result.exit_code})")
              + "".join(f"\n  {f}" for f in failures))
        bad += (not ok) or bool(failures)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
