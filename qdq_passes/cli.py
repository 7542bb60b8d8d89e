"""``qdq-opt``: run a pass pipeline over an ONNX model, in the manner of ``mlir-opt``.

    qdq-opt IN -o OUT -p 'constants-to-initializers,dce,topo-sort' --timing --pass-statistics

Exit codes: 0 success, 1 a failure (bad model, failing pass, an output that cannot be written),
2 a usage error (unknown pass or option, malformed pipeline), 128 + N on signal N (130 Ctrl-C,
143 SIGTERM, 129 SIGHUP, 141 a closed pipe on stdout). Errors are one line (pipeline errors add a
caret line) without a traceback unless ``--debug``; the input is never modified, an output that
would overwrite a file the run reads is refused before any work, and no output or temporary file
is left on failure or on a signal.

This module imports only the standard library at import time: the rest (onnx, torch: about a
second) is imported inside :func:`main`, where a Ctrl-C or a signal is handled like at any moment.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import textwrap
from collections.abc import Sequence

__all__ = ["main", "build_parser", "list_passes_text"]

PROG = "qdq-opt"
#: Signals that end a run like Ctrl-C does: temporary files removed, exit 128 + the signal.
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
_SEED_RANGE = (0, 2**63 - 1)
_MAX_THREADS = 4096


class Stopped(BaseException):
    """A stop signal arrived; raised where the program was so ``finally`` and ``with`` clean up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _bounded_int(name: str, low: int, high: int):  # noqa: ANN202 - an argparse type
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{name} must be in [{low}, {high}], got {value}")
        return value
    return convert


class _BadArguments(Exception):
    """The command line does not parse (argparse's message)."""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (``main`` prints it, exit 2) instead of the usage text."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _BadArguments(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``qdq-opt``."""
    p = _ArgumentParser(
        prog=PROG,
        description="Run a pipeline of qdq-passes passes over an ONNX model (.onnx, .onnxtxt, or - for stdin).",
        epilog="Pipeline syntax: pass{key=value key2=[a,b]},other-pass  (see --list-passes)",
    )
    p.add_argument("input", nargs="?", help="input model: .onnx (external data allowed), .onnxtxt, or - (stdin)")
    p.add_argument("-o", "--output", default="-", help="output model: .onnx, .onnxtxt, or - (stdout, ONNX text; default)")
    p.add_argument("-p", "--pipeline", "--pass-pipeline", dest="pipeline", help="the pass pipeline to run")
    p.add_argument("--list-passes", action="store_true", help="list every pass with its options and statistics, then exit")
    p.add_argument("--print-ir-before", action="append", default=[], metavar="PASS", help="print the IR before PASS (repeatable)")
    p.add_argument("--print-ir-after", action="append", default=[], metavar="PASS", help="print the IR after PASS (repeatable)")
    p.add_argument("--print-ir-before-all", action="store_true", help="print the IR before every pass")
    p.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass")
    p.add_argument("--timing", action="store_true", help="print each pass's wall time")
    p.add_argument("--pass-statistics", action="store_true", help="print each pass's statistics")
    p.add_argument("--verify-each", dest="verify_each", action="store_true", default=True,
                   help="verify the model after every pass (default)")
    p.add_argument("--no-verify-each", dest="verify_each", action="store_false", help="do not verify after each pass")
    p.add_argument("--reproducer", metavar="FILE", help="on failure, write the failing pass's input with a RUN line to FILE")
    p.add_argument("--external-data", choices=["auto", "yes", "no"], default="auto",
                   help="save tensors to OUT.data: auto keeps the input's choice (default)")
    p.add_argument("--binary", action="store_true", help="write binary ONNX to stdout instead of ONNX text")
    p.add_argument("--calib", metavar="PATH",
                   help="calibration data (.npz, folder of .npz) for passes with a 'calib' option")
    p.add_argument("--calib-batch-axis", metavar="NAME=AXIS", action="append", default=[],
                   help="the batch axis of calibration input NAME when not 0 ('none': one value for every "
                        "sample, e.g. a sample rate); repeatable; fills 'calib-batch-axis'")
    p.add_argument("--float-model", metavar="PATH",
                   help="reference float model for passes with a 'float-model' option")
    p.add_argument("--device", metavar="DEVICE", help="torch device (cpu, cuda) for passes with a 'device' option")
    p.add_argument("--seed", type=_bounded_int("--seed", *_SEED_RANGE), default=0,
                   help="seed of every random generator (default 0)")
    p.add_argument("--threads", type=_bounded_int("--threads", 1, _MAX_THREADS), default=None,
                   help="torch and onnxruntime threads (default: half the available cores, at least 1)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    return p


def list_passes_text() -> str:
    """The ``--list-passes`` listing: name, summary, options (type, default, help), statistics."""
    from qdq_passes.api import registered_passes
    from qdq_passes.infra.options import option_fields

    lines = ["Available passes:"]
    for name, cls in registered_passes().items():
        lines.append(f"  {name}")
        lines.append(f"      {cls.summary}")
        for field in option_fields(cls.Options):
            default = field.format(field.default)
            lines.append(f"      {field.key}=<{field.type_name}>  (default {default})")
            lines.extend(textwrap.wrap(field.help, width=88, initial_indent=" " * 10, subsequent_indent=" " * 10))
        if cls.statistics:
            lines.append("      statistics: " + ", ".join(cls.statistics))
    return "\n".join(lines)


class _Stderr(logging.StreamHandler):
    """Writes each record to ``sys.stderr`` as it is then (a caller may have redirected it)."""

    @property
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


def _log_to_stderr(level: int) -> None:
    """The package's log records as ``qdq-opt: LEVEL: message`` lines on stderr (set up once)."""
    package = logging.getLogger("qdq_passes")
    package.setLevel(level)
    if not any(isinstance(h, _Stderr) for h in package.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
        package.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    previous = {}
    try:
        for signum in _STOP_SIGNALS:
            previous[signum] = signal.signal(signum, _stop)
    except ValueError:  # not the main thread: the caller owns the signals
        pass
    debug = False
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        debug = args.debug
        _log_to_stderr(logging.DEBUG if debug else logging.WARNING)
        return _main(parser, args)
    except _BadArguments as exc:
        print(f"{PROG}: error: {exc} (see --help)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _stopped(signal.SIGINT, "interrupted")
    except Stopped as stop:
        return _stopped(stop.signum, f"stopped by {signal.Signals(stop.signum).name}")
    except BrokenPipeError:  # the reader of stdout went away (``| head``): nothing more to say
        _silence_stdout()
        return 128 + getattr(signal, "SIGPIPE", 13)
    except Exception as exc:  # noqa: BLE001 - last resort: one line, no traceback unless --debug
        if debug:
            raise
        print(f"{PROG}: internal error: {type(exc).__name__}: {exc} (rerun with --debug for a traceback)", file=sys.stderr)
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop(signum: int, frame: object) -> None:
    raise Stopped(signum)


def _stopped(signum: int, words: str) -> int:
    """Report a stop in one line (ignoring further stop signals meanwhile); exit 128 + the signal."""
    for other in _STOP_SIGNALS:
        signal.signal(other, signal.SIG_IGN)
    try:
        print(f"{PROG}: {words}", file=sys.stderr)
    except OSError:
        pass
    return 128 + signum


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the command; a :class:`QdqError` becomes its one line and exit code."""
    from qdq_passes.infra.errors import QdqError

    try:
        return _run(parser, args)
    except QdqError as exc:
        if args.debug:
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        if "<stdout>" in str(exc):
            _silence_stdout()
        return exc.exit_code


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from qdq_passes.infra.errors import QdqError, UsageError

    from qdq_passes.model_io import write_stdout

    if args.list_passes:
        write_stdout(list_passes_text() + "\n")
        return 0
    if args.input is None:
        raise UsageError("no input model given (see --help)")
    if args.pipeline is None:
        raise UsageError("no pipeline given: use -p 'pass1,pass2' (see --list-passes)")

    import qdq_passes
    from qdq_passes.infra.manager import PassManager
    from qdq_passes.infra.options import input_paths
    from qdq_passes.api import get_pass
    from qdq_passes.model_io import (
        check_writes, external_data_files, external_data_path, load_model, model_format, model_text, save_model)

    defaults = {"seed": str(args.seed)}
    for key, value in (("calib", args.calib), ("float-model", args.float_model), ("device", args.device)):
        if value is not None:
            defaults[key] = value
    if args.calib_batch_axis:
        defaults["calib-batch-axis"] = list(args.calib_batch_axis)
    pipeline = qdq_passes.parse_pipeline(args.pipeline, defaults=defaults)
    for name in [*args.print_ir_before, *args.print_ir_after]:
        get_pass(name)
    read = [args.input, *(path for path in (args.calib, args.float_model) if path),
            *(path for p in pipeline for path in input_paths(p.options))]
    outputs = [path for path in (args.output, args.reproducer) if path not in (None, "-")]
    check_writes(outputs, read)
    qdq_passes.configure(threads=args.threads, seed=args.seed)
    model = load_model(args.input)
    if args.output != "-" and args.external_data != "no" and model_format(args.output) == "binary":
        data_files = [file for source in [model, *read[1:]] for file in external_data_files(source)]
        check_writes([external_data_path(args.output)], [*read, *data_files])
    if args.verify_each:
        from qdq_passes.infra.verify import verify_model

        try:
            verify_model(model)
        except QdqError as exc:
            raise type(exc)(f"{args.input}: invalid input model: {exc}") from None
    manager = PassManager(
        pipeline,
        verify_each=args.verify_each,
        print_ir_before=args.print_ir_before,
        print_ir_after=args.print_ir_after,
        print_ir_before_all=args.print_ir_before_all,
        print_ir_after_all=args.print_ir_after_all,
        reproducer=args.reproducer,
    )
    report = manager.run(model)
    qdq_passes.stamp_provenance(model, pipeline)
    external = {"auto": None, "yes": True, "no": False}[args.external_data]
    if args.output == "-" and args.binary:
        save_model(model, "-")
    elif args.output == "-":
        write_stdout(model_text(model, "<stdout>"))
    else:
        save_model(model, args.output, external_data=external)
    if args.timing:
        print(report.timing_table(), file=sys.stderr)
    if args.pass_statistics:
        print(report.statistics_table(), file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
