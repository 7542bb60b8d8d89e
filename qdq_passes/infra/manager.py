"""The pass manager: runs a pipeline with MLIR-style instrumentation.

Instrumentation: print the IR before/after named passes or all passes, per-pass wall time,
pass statistics, verification after each pass (on by default), and a reproducer file holding the
failing pass's input in ONNX text form with a ``# RUN:`` line.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import TextIO

import onnx
import onnx_ir

from qdq_passes.infra.errors import PassFailure, QdqError
from qdq_passes.infra.pass_base import QdqPass
from qdq_passes.infra.pipeline import Pipeline
from qdq_passes.infra.verify import verify_model
from qdq_passes.ir.printer import print_model

__all__ = ["PassManager", "PassRecord", "RunReport"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PassRecord:
    """What one pass did: its canonical text, wall time, whether it changed the model, its statistics."""

    pass_text: str
    argument: str
    seconds: float
    modified: bool
    stats: dict[str, int]
    details: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class RunReport:
    """The records of one pipeline run, with printers for the timing and statistics reports."""

    records: list[PassRecord] = dataclasses.field(default_factory=list)
    verify_seconds: float = 0.0

    @property
    def modified(self) -> bool:
        """Whether any pass changed the model."""
        return any(r.modified for r in self.records)

    def timing_table(self) -> str:
        """Per-pass wall time, as MLIR's ``-mlir-timing`` prints it."""
        total = sum(r.seconds for r in self.records) + self.verify_seconds
        lines = ["===" + "-" * 60 + "===", "  ... Pass execution timing report ...", "===" + "-" * 60 + "===",
                 f"  Total Execution Time: {total:.4f} seconds", "", "  ----Wall Time----  ----Name----"]
        rows = [(r.seconds, r.argument) for r in self.records]
        if self.verify_seconds:
            rows.append((self.verify_seconds, "(verify)"))
        for seconds, name in rows:
            share = 100.0 * seconds / total if total else 0.0
            lines.append(f"  {seconds:8.4f} ({share:5.1f}%)  {name}")
        lines.append(f"  {total:8.4f} (100.0%)  Total")
        return "\n".join(lines)

    def statistics_table(self) -> str:
        """Every pass's declared statistics, as MLIR's ``-mlir-pass-statistics`` prints them."""
        lines = ["===" + "-" * 60 + "===", "  ... Pass statistics report ...", "===" + "-" * 60 + "==="]
        for r in self.records:
            lines.append(f"'{r.argument}'  (modified: {'yes' if r.modified else 'no'})")
            for name, value in r.stats.items():
                lines.append(f"  ({name}) {value}")
            lines.extend(f"  {line}" for line in r.details)
        return "\n".join(lines)


class PassManager:
    """Run a :class:`Pipeline` in place on an ``onnx_ir.Model`` with instrumentation."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        verify_each: bool = True,
        print_ir_before: Collection[str] = (),
        print_ir_after: Collection[str] = (),
        print_ir_before_all: bool = False,
        print_ir_after_all: bool = False,
        reproducer: str | Path | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.verify_each = verify_each
        self.print_ir_before = set(print_ir_before)
        self.print_ir_after = set(print_ir_after)
        self.print_ir_before_all = print_ir_before_all
        self.print_ir_after_all = print_ir_after_all
        self.reproducer = Path(reproducer) if reproducer is not None else None
        self.stream = stream

    def run(self, model: onnx_ir.Model) -> RunReport:
        """Run every pass in order, each after its prerequisites; raise a :class:`QdqError` naming
        the pass that failed."""
        report = RunReport()
        for pass_ in self.pipeline:
            for prerequisite in pass_.prerequisites(model):
                self._run_one(model, prerequisite, f"{prerequisite.argument} (for {pass_.argument})", report)
            self._run_one(model, pass_, pass_.argument, report)
        return report

    def _run_one(self, model: onnx_ir.Model, pass_: QdqPass, label: str, report: RunReport) -> None:
        """Run one pass with the instrumentation; ``label`` names it in the reports and dumps."""
        snapshot = onnx_ir.to_proto(model) if self.reproducer is not None else None
        if self.print_ir_before_all or pass_.argument in self.print_ir_before:
            self._dump(model, f"IR Dump Before {label}")
        start = time.perf_counter()
        try:
            result = pass_.run_alone(model)
            if result.model is not model:
                raise PassFailure(f"{pass_.argument}: returned a different model object from an in-place pass")
        except Exception as exc:  # noqa: BLE001 - every failure is reported with the pass name
            self._write_reproducer(snapshot, pass_)
            raise _named_failure(pass_, exc) from exc
        seconds = time.perf_counter() - start
        report.records.append(
            PassRecord(str(pass_), label, seconds, result.modified, dict(pass_.stats), list(pass_.details)))
        if self.verify_each:
            start = time.perf_counter()
            try:
                verify_model(model)
            except QdqError as exc:
                self._write_reproducer(snapshot, pass_)
                raise type(exc)(f"after pass '{pass_.argument}': {exc}") from None
            report.verify_seconds += time.perf_counter() - start
        if self.print_ir_after_all or pass_.argument in self.print_ir_after:
            self._dump(model, f"IR Dump After {label}" + ("" if result.modified else " (no change)"))

    def _dump(self, model: onnx_ir.Model, title: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(f"# -----// {title} //----- #\n{print_model(model)}\n")
        stream.flush()

    def _write_reproducer(self, snapshot: onnx.ModelProto | None, pass_: QdqPass) -> None:
        if snapshot is None or self.reproducer is None:
            return
        from qdq_passes.model_io import write_text_atomically

        run = f"# RUN: qdq-opt %s -p {shlex.quote(str(pass_))}\n"
        write_text_atomically(self.reproducer, run + onnx.printer.to_text(snapshot) + "\n")
        logger.warning("reproducer for the failing pass '%s' written to %s", pass_.argument, self.reproducer)


def _named_failure(pass_: QdqPass, exc: Exception) -> QdqError:
    """A user-facing error that starts with the failing pass's name."""
    message = str(exc).strip() or type(exc).__name__
    if isinstance(exc, QdqError):
        if message.startswith(pass_.argument):
            return exc
        return type(exc)(f"{pass_.argument}: {message}")
    return PassFailure(f"pass '{pass_.argument}' failed: {type(exc).__name__}: {message}")
