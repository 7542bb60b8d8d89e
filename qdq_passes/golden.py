"""Golden cases, after MLIR's lit and FileCheck tests: run a case's ``# RUN:`` line, check its output.

A case file is ``tests/passes/<pass>/<name>.onnxtxt``: a ``# RUN: qdq-opt %s ...`` line (``# RUN:
not qdq-opt ...`` for a case that must fail), then one or more cases separated by ``# -----``
lines (MLIR's ``--split-input-file``; each case is run on its own). A case is comment lines with
its checks, then its input model in ONNX text form (the ONNX parser skips ``#`` lines).

Checks run against the canonical text of the output model (:func:`qdq_passes.ir.printer.print_model`,
the version stamp left out), or against the error the tool printed for a failing case:

* ``# CHECK: text``: ``text`` appears after the previous match;
* ``# CHECK-NEXT: text``: on the line right after the previous match's line;
* ``# CHECK-SAME: text``: on the previous match's line, after it;
* ``# CHECK-NOT: text``: absent between the previous match and the next one (or the end);
* ``# CHECK-LABEL: text``: found first, in order; the checks after it match only up to the next label.

In ``text``, ``{{regex}}`` matches a regular expression, ``[[NAME:regex]]`` captures what it
matches, and ``[[NAME]]`` must equal what was captured. ``# CHECK-ERR...`` lines do the same
against what the tool printed on stderr (reports, printed blocks), the case's path shown as ``%s``.

A case with a ``# SNAPSHOT`` line (its file holding one case) is also compared, whole, with
``<name>.expected`` beside it: kept for the cases where the whole text is the point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import shlex
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx_ir

__all__ = ["GoldenCase", "GoldenResult", "find_cases", "read_cases", "run_case", "check_lines"]

VERSION_KEY = "qdq_passes.version"
SEPARATOR = "# -----"
_KINDS = ("CHECK-LABEL", "CHECK-NEXT", "CHECK-SAME", "CHECK-NOT", "CHECK")
_TOKEN = re.compile(r"\{\{(.*?)\}\}(?!\})|\[\[([A-Za-z_][A-Za-z0-9_]*)(?::(.*?))?\]\](?!\])")


@dataclasses.dataclass
class GoldenCase:
    """One case of a case file: its RUN command, its checks and its input text."""

    path: Path
    index: int  # the case's position in its file (0 for the first)
    run: list[str]
    expect_failure: bool
    checks: list[tuple[str, str]]
    err_checks: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    text: str = ""
    snapshot: bool = False

    @property
    def name(self) -> str:
        """``folder/file.onnxtxt``, with ``#index`` for the cases after the first."""
        base = f"{self.path.parent.name}/{self.path.name}"
        return base if self.index == 0 else f"{base}#{self.index}"

    @property
    def expected_path(self) -> Path:
        """Where a snapshot case's expected output lives."""
        return self.path.with_suffix(".expected")

    def model(self) -> onnx_ir.Model:
        """The case's input model."""
        import onnx
        import onnx_ir

        return onnx_ir.from_proto(onnx.parser.parse_model(self.text))

    @classmethod
    def read(cls, path: Path) -> GoldenCase:
        """The only (or first) case of ``path``."""
        return read_cases(path)[0]


def read_cases(path: Path) -> list[GoldenCase]:
    """Every case of a case file; ``ValueError`` naming the file when it is malformed."""
    chunks = re.split(rf"^{re.escape(SEPARATOR)}[ \t]*$\n?", path.read_text(encoding="utf-8"), flags=re.M)
    runs = [line.strip()[len("# RUN:"):] for line in chunks[0].splitlines() if line.strip().startswith("# RUN:")]
    if len(runs) != 1:
        raise ValueError(f"{path}: needs exactly one '# RUN:' line (in its first case), found {len(runs)}")
    run = shlex.split(runs[0])
    expect_failure = run[0] == "not"
    if expect_failure:
        run = run[1:]
    if not run or run[0] != "qdq-opt" or "%s" not in run:
        raise ValueError(f"{path}: the RUN line must be 'qdq-opt %s ...' (optionally after 'not')")
    cases = []
    for index, chunk in enumerate(chunks):
        checks: list[tuple[str, str]] = []
        err_checks: list[tuple[str, str]] = []
        snapshot = False
        for line in chunk.splitlines():
            stripped = line.strip()
            snapshot |= stripped == "# SNAPSHOT"
            for kind in (*[k.replace("CHECK", "CHECK-ERR", 1) for k in _KINDS], *_KINDS):
                if stripped.startswith(f"# {kind}:"):
                    target = err_checks if kind.startswith("CHECK-ERR") else checks
                    target.append((kind.replace("-ERR", "", 1), stripped[len(kind) + 3:].strip()))
                    break
        if snapshot and len(chunks) > 1:
            raise ValueError(f"{path}: a # SNAPSHOT case must be the only case of its file")
        if not (checks or err_checks or snapshot):
            raise ValueError(f"{path}: case {index} checks nothing (no CHECK line, no # SNAPSHOT)")
        cases.append(GoldenCase(path, index, run[1:], expect_failure, checks, err_checks, chunk, snapshot))
    return cases


@dataclasses.dataclass
class GoldenResult:
    """The output of running a case: canonical model text, or the error text for a failure case."""

    exit_code: int
    text: str
    stderr: str = ""


def find_cases(root: Path) -> list[GoldenCase]:
    """Every case under ``root``, in file order."""
    return [case for path in sorted(root.rglob("*.onnxtxt")) for case in read_cases(path)]


def run_case(case: GoldenCase) -> GoldenResult:
    """Run the case's command in-process on its input; return the canonical output."""
    import onnx_ir

    from qdq_passes.cli import main
    from qdq_passes.ir.printer import print_model
    from qdq_passes.model_io import load_model

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / case.path.name  # the case's own text, however many its file holds
        source.write_text(case.text, encoding="utf-8")
        out = Path(tmp) / "out.onnx"
        argv = [str(source) if a == "%s" else a for a in case.run] + ["-o", str(out)]
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            code = main(argv)
        err = stderr.getvalue().replace(str(source), "%s")
        if case.expect_failure or code != 0:
            return GoldenResult(code, err, err)
        model: onnx_ir.Model = load_model(out)
        model.metadata_props.pop(VERSION_KEY, None)
        return GoldenResult(code, print_model(model), err)


def _compile(pattern: str, captured: dict[str, str]) -> re.Pattern[str]:
    """A check's text as a regular expression: literal, with ``{{...}}`` and ``[[...]]`` resolved."""
    parts, pos = [], 0
    for m in _TOKEN.finditer(pattern):
        parts.append(re.escape(pattern[pos:m.start()]))
        regex, name, definition = m.groups()
        if regex is not None:
            parts.append(f"(?:{regex})")
        elif definition is not None:
            parts.append(f"(?P<{name}>{definition})")
        elif name in captured:
            parts.append(re.escape(captured[name]))
        else:
            raise ValueError(f"[[{name}]] is used before it is captured")
        pos = m.end()
    parts.append(re.escape(pattern[pos:]))
    return re.compile("".join(parts))


def _line_bounds(text: str, pos: int) -> tuple[int, int]:
    """Start and end of the line holding ``pos``."""
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return start, len(text) if end < 0 else end


def _regions(checks: list[tuple[str, str]], text: str) -> tuple[list[tuple[int, int, tuple[int, int] | None,
                                                                              list[tuple[str, str]]]], list[str]]:
    """The checks split at their CHECK-LABEL lines: each group with the span of text it searches and
    its label's line (what a CHECK-NEXT right after the label follows)."""
    groups: list[tuple[str | None, list[tuple[str, str]]]] = [(None, [])]
    for kind, pattern in checks:
        if kind == "CHECK-LABEL":
            groups.append((pattern, []))
        else:
            groups[-1][1].append((kind, pattern))
    starts: list[int] = [0]
    lines: list[tuple[int, int] | None] = [None]
    failures: list[str] = []
    pos = 0
    for label, _ in groups[1:]:
        m = _compile(label, {}).search(text, pos)
        if m is None:
            failures.append(f"CHECK-LABEL: '{label}' not found after offset {pos}")
            starts.append(len(text))
            lines.append(None)
        else:
            starts.append(m.end())
            lines.append(_line_bounds(text, m.start()))
            pos = m.end()
    ends = [line[0] if line is not None else len(text) for line in lines[1:]] + [len(text)]
    return [(s, max(s, e), line, g[1]) for s, e, line, g in zip(starts, ends, lines, groups)], failures


def check_lines(checks: list[tuple[str, str]], text: str) -> list[str]:
    """FileCheck-style matching of ``checks`` on ``text``; returns the failures (empty when all hold)."""
    regions, failures = _regions(checks, text)
    captured: dict[str, str] = {}
    for start, end, label_line, group in regions:
        pos, line_of_match = start, label_line
        pending: list[str] = []
        for kind, pattern in group:
            try:
                regex = _compile(pattern, captured)
            except ValueError as exc:
                failures.append(f"{kind}: '{pattern}': {exc}")
                continue
            if kind == "CHECK-NOT":
                pending.append(pattern)
                continue
            lo, hi = pos, end
            if kind in ("CHECK-NEXT", "CHECK-SAME"):
                if line_of_match is None:
                    failures.append(f"{kind}: '{pattern}' has no previous match")
                    continue
                if kind == "CHECK-NEXT":
                    lo, hi = _line_bounds(text, min(line_of_match[1] + 1, len(text)))
                    if line_of_match[1] >= len(text):
                        lo = hi = len(text)
                else:
                    hi = line_of_match[1]
            m = regex.search(text, lo, hi)
            if m is None:
                where = {"CHECK-NEXT": "on the next line", "CHECK-SAME": "on the same line"}.get(kind, "")
                failures.append(f"{kind}: '{pattern}' not found {where or f'after offset {pos}'}".rstrip())
                continue
            failures.extend(f"CHECK-NOT: '{p}' found" for p in pending if _compile(p, captured).search(text, pos, m.start()))
            pending = []
            captured.update({k: v for k, v in m.groupdict().items() if v is not None})
            pos, line_of_match = m.end(), _line_bounds(text, m.start())
        failures.extend(f"CHECK-NOT: '{p}' found" for p in pending if _compile(p, captured).search(text, pos, end))
    return failures
