"""Golden cases, after MLIR's FileCheck tests: run a case's ``# RUN:`` line, compare with its golden.

A case is ``tests/passes/<pass>/<case>.onnxtxt``: ``# RUN:`` and ``# CHECK:`` comment lines, then the
input model in ONNX text form (the ONNX parser skips ``#`` lines). Beside it, ``<case>.expected`` holds
the canonical text (:func:`qdq_passes.ir.printer.print_model`) of the output model, or, for a
``# RUN: not qdq-opt ...`` case, the error the tool printed.

``# CHECK: text`` lines must appear in the output in order; ``# CHECK-NOT: text`` must not appear
between the previous CHECK match and the next one (or the end). ``# CHECK-ERR:`` and
``# CHECK-ERR-NOT:`` do the same against what the tool printed on stderr (reports, printed blocks),
with the case's path shown as ``%s``; the ``.expected`` file holds only the output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import shlex
import tempfile
from pathlib import Path

__all__ = ["GoldenCase", "GoldenResult", "find_cases", "run_case", "check_lines"]

VERSION_KEY = "qdq_passes.version"


@dataclasses.dataclass
class GoldenCase:
    """A golden case file with its RUN command and CHECK lines."""

    path: Path
    run: list[str]
    expect_failure: bool
    checks: list[tuple[str, str]]
    err_checks: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def expected_path(self) -> Path:
        """Where the expected output lives."""
        return self.path.with_suffix(".expected")

    @classmethod
    def read(cls, path: Path) -> GoldenCase:
        """Parse the RUN and CHECK lines of a case file."""
        run: list[str] | None = None
        checks: list[tuple[str, str]] = []
        err_checks: list[tuple[str, str]] = []
        for line in path.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            if stripped.startswith("# RUN:"):
                if run is not None:
                    raise ValueError(f"{path}: more than one RUN line")
                run = shlex.split(stripped[len("# RUN:"):])
            for kind in ("CHECK-ERR-NOT", "CHECK-ERR", "CHECK-NOT", "CHECK"):
                prefix = f"# {kind}:"
                if stripped.startswith(prefix):
                    target = err_checks if kind.startswith("CHECK-ERR") else checks
                    target.append((kind.replace("-ERR", ""), stripped[len(prefix):].strip()))
                    break
        if not run:
            raise ValueError(f"{path}: no '# RUN:' line")
        expect_failure = run[0] == "not"
        if expect_failure:
            run = run[1:]
        if run[0] != "qdq-opt" or "%s" not in run:
            raise ValueError(f"{path}: the RUN line must be 'qdq-opt %s ...' (optionally after 'not')")
        return cls(path, run[1:], expect_failure, checks, err_checks)


@dataclasses.dataclass
class GoldenResult:
    """The output of running a case: canonical model text, or the error text for a failure case."""

    exit_code: int
    text: str
    stderr: str = ""


def find_cases(root: Path) -> list[Path]:
    """Every case file under ``root``, sorted."""
    return sorted(root.rglob("*.onnxtxt"))


def run_case(case: GoldenCase) -> GoldenResult:
    """Run the case's command in-process on its own file; return the canonical output."""
    import onnx_ir

    from qdq_passes.cli import main
    from qdq_passes.ir.printer import print_model
    from qdq_passes.model_io import load_model

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.onnx"
        argv = [str(case.path) if a == "%s" else a for a in case.run] + ["-o", str(out)]
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            code = main(argv)
        err = stderr.getvalue().replace(str(case.path), "%s")
        if case.expect_failure or code != 0:
            return GoldenResult(code, err, err)
        model: onnx_ir.Model = load_model(out)
        model.metadata_props.pop(VERSION_KEY, None)
        return GoldenResult(code, print_model(model), err)


def check_lines(checks: list[tuple[str, str]], text: str) -> list[str]:
    """FileCheck-style CHECK / CHECK-NOT matching; returns the failures (empty when all hold)."""
    failures: list[str] = []
    pos = 0
    pending_not: list[str] = []
    for kind, pattern in checks:
        if kind == "CHECK-NOT":
            pending_not.append(pattern)
            continue
        found = text.find(pattern, pos)
        if found < 0:
            failures.append(f"CHECK: '{pattern}' not found after offset {pos}")
            continue
        failures.extend(f"CHECK-NOT: '{p}' found" for p in pending_not if p in text[pos:found])
        pending_not = []
        pos = found + len(pattern)
    failures.extend(f"CHECK-NOT: '{p}' found" for p in pending_not if p in text[pos:])
    return failures
