"""Reading and writing models: ``.onnx`` (with external data), ``.onnxtxt`` (ONNX text), ``-``.

Loading never reads a file outside the model's folder through an external-data reference, and
every failure names the file. Writing is atomic: everything goes to a temporary folder beside the
target and is renamed into place, so a failed save leaves no partial output. An output that is a
symbolic link replaces the file it points at (the link stays); one that is a device or a pipe
(``/dev/stdout``) is written straight through. :func:`check_writes` refuses, before any work, an
output that is a file the run reads, however it is spelled.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import google.protobuf.message
import onnx
import onnx_ir

from qdq_passes.infra.errors import ModelLoadError, ModelSaveError, UsageError

__all__ = [
    "load_model", "save_model", "model_text", "write_text_atomically", "model_format", "check_writes",
    "external_data_files", "external_data_path", "write_stdout", "EXTERNAL_DATA_THRESHOLD",
]

#: Models whose initializers add up past this size are saved with external data (protobuf caps at 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1536 * 1024 * 1024
_TEXT_SUFFIXES = (".onnxtxt", ".txt", ".onnxtext")
#: Sub-byte types: onnx's printer writes them as ``...`` and its parser reads their literals packed.
_TEXT_UNSAFE = {
    onnx_ir.DataType.INT4, onnx_ir.DataType.UINT4, onnx_ir.DataType.INT2, onnx_ir.DataType.UINT2,
    onnx_ir.DataType.FLOAT4E2M1,
}


def model_format(path: str | Path) -> str:
    """``"text"`` for ONNX text files, ``"binary"`` otherwise."""
    return "text" if str(path).endswith(_TEXT_SUFFIXES) else "binary"


def load_model(path: str | Path) -> onnx_ir.Model:
    """Load a model from ``.onnx``, ``.onnxtxt`` or ``-`` (stdin; text or binary, sniffed)."""
    if str(path) == "-":
        data = sys.stdin.buffer.read()
        return _from_bytes(data, "<stdin>", text=_looks_like_text(data))
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a folder, not a model file")
    if model_format(path) == "text":
        return _from_bytes(_read(path), str(path), text=True)
    try:
        model = onnx_ir.load(path)
    except (google.protobuf.message.DecodeError, onnx.onnx_cpp2py_export.checker.ValidationError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: not a valid ONNX model ({_first_line(exc)})") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror or exc})") from None
    _check_external_data(model, path)
    return model


def save_model(model: onnx_ir.Model, path: str | Path, *, external_data: bool | None = None) -> None:
    """Save atomically to ``.onnx``, ``.onnxtxt`` or ``-`` (stdout).

    ``external_data``: None keeps tensors external if the model had any (or is too big for one
    protobuf), writing them to ``<name>.data`` beside the output; True/False forces it.
    """
    if str(path) == "-":
        write_stdout(onnx_ir.to_proto(onnx_ir.external_data.load_to_model(model)).SerializeToString())
        return
    shown, path = str(path), Path(os.path.realpath(path))
    if path.is_dir():
        raise ModelSaveError(f"{shown}: is a folder, not a model file")
    if path.exists() and not path.is_file():  # a device or a pipe: no rename onto it
        _write_through(model, path, shown)
        return
    if model_format(path) == "text":
        write_text_atomically(path, model_text(model, shown))
        return
    if external_data is None:
        external_data = _has_external_tensors(model) or _initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD
    target_dir = path.parent
    if not target_dir.is_dir():
        raise ModelSaveError(f"{shown}: folder '{Path(shown).parent}' does not exist")
    data_name = external_data_path(path).name
    try:
        with tempfile.TemporaryDirectory(dir=target_dir, prefix=f".{path.name}.tmp-") as tmp:
            tmp_model = Path(tmp) / path.name
            if external_data:
                onnx_ir.save(model, tmp_model, external_data=data_name)
                os.replace(Path(tmp) / data_name, target_dir / data_name)
            else:
                onnx_ir.save(model, tmp_model)
            os.replace(tmp_model, path)
    except (OSError, ValueError, onnx_ir.serde.SerdeError) as exc:
        raise ModelSaveError(f"{shown}: cannot write ({_os_reason(exc)})") from None


def write_stdout(data: bytes | str) -> None:
    """Write to stdout and flush; a full device is a :class:`ModelSaveError` (a closed pipe stays
    ``BrokenPipeError``, for the caller to end quietly)."""
    try:
        if isinstance(data, str):
            sys.stdout.write(data)
        else:
            sys.stdout.buffer.write(data)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise ModelSaveError(f"<stdout>: cannot write ({_os_reason(exc)})") from None


def _write_through(model: onnx_ir.Model, path: Path, shown: str) -> None:
    """Write to a device or a pipe in one stream (ONNX text or binary as the name says)."""
    if model_format(path) == "text":
        data = model_text(model, shown).encode("utf-8")
    else:
        data = onnx_ir.to_proto(onnx_ir.external_data.load_to_model(model)).SerializeToString()
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise ModelSaveError(f"{shown}: cannot write ({_os_reason(exc)})") from None


def external_data_path(path: str | Path) -> Path:
    """Where :func:`save_model` puts the external data of a model saved to ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def external_data_files(source: onnx_ir.Model | str | Path) -> list[Path]:
    """The external-data files a model reads: of a loaded model, or of a model file (read without
    its tensors; a file that is not a binary ONNX model reads none)."""
    if isinstance(source, onnx_ir.Model):
        return sorted({Path(t.path) for t in _all_tensors(source) if isinstance(t, onnx_ir.ExternalTensor)})
    path = Path(source)
    if not path.is_file() or model_format(path) == "text" or path.suffix != ".onnx":
        return []
    try:
        model = onnx_ir.load(path)  # tensors kept external are not read
    except Exception:  # noqa: BLE001 - not a model: it reads no data files
        return []
    return external_data_files(model)


def check_writes(outputs: list[str | Path], reads: list[str | Path]) -> None:
    """Refuse (a usage error) an output that is, by any spelling, a file the run reads.

    Paths are compared after resolving ``..`` and symbolic links, and by inode where both exist
    (a hard link). A folder read is a calibration folder: an ``.npz`` output inside it is refused.
    An output equal to another output is refused too.
    """
    seen: dict[str, str] = {}
    for output in outputs:
        target = os.path.realpath(output)
        if target in seen:
            raise UsageError(f"{output}: is also the output {seen[target]}; refused")
        seen[target] = str(output)
        for read in reads:
            source = os.path.realpath(read)
            same = target == source or (os.path.exists(target) and os.path.exists(source)
                                        and os.path.samefile(target, source))
            if same:
                raise UsageError(f"{output}: is {read}, which this run reads; refused (choose another output)")
            if os.path.isdir(source) and Path(target).is_relative_to(source) and target.endswith(".npz"):
                raise UsageError(f"{output}: lies inside {read}, which this run reads; refused")


def model_text(model: onnx_ir.Model, where: str) -> str:
    """The model in ONNX text form, every tensor inline; refuses types the text form garbles.

    onnx's printer writes int4/uint4 (and other sub-byte) tensors as ``...`` and its parser reads
    such literals packed, so those models must be saved as ``.onnx``.
    """
    for tensor in _all_tensors(model):
        if tensor.dtype in _TEXT_UNSAFE:
            raise ModelSaveError(
                f"{where}: tensor '{tensor.name}' is {tensor.dtype.name}, which ONNX text cannot hold "
                "faithfully; save as .onnx (or use --binary for stdout)"
            )
    model = onnx_ir.external_data.load_to_model(model)
    return onnx.printer.to_text(onnx_ir.to_proto(model)) + "\n"


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write text to ``path`` via a temporary file in the same folder, then rename."""
    path = Path(path)
    target_dir = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(dir=target_dir, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        if "tmp" in locals() and os.path.exists(tmp):
            os.unlink(tmp)
        raise ModelSaveError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _looks_like_text(data: bytes) -> bool:
    head = data.lstrip()[:1]
    return head in (b"<", b"#")


def _from_bytes(data: bytes, name: str, *, text: bool) -> onnx_ir.Model:
    try:
        if text:
            proto = onnx.parser.parse_model(data.decode("utf-8"))
        else:
            proto = onnx.load_model_from_string(data)
    except UnicodeDecodeError:
        raise ModelLoadError(f"{name}: not ONNX text (not UTF-8)") from None
    except (google.protobuf.message.DecodeError, onnx.parser.ParseError, ValueError, RuntimeError) as exc:
        kind = "ONNX text" if text else "a valid ONNX model"
        raise ModelLoadError(f"{name}: not {kind} ({_first_line(exc)})") from None
    model = onnx_ir.from_proto(proto)
    if _has_external_tensors(model):
        raise ModelLoadError(f"{name}: refers to external data, which needs a model file path (not text or stdin)")
    return model


def _check_external_data(model: onnx_ir.Model, path: Path) -> None:
    """Refuse external-data references that resolve outside the model's folder."""
    folder = path.resolve().parent
    for tensor in _all_tensors(model):
        if isinstance(tensor, onnx_ir.ExternalTensor):
            target = (folder / tensor.location).resolve()
            if os.path.isabs(tensor.location) or not target.is_relative_to(folder):
                raise ModelLoadError(
                    f"{path}: tensor '{tensor.name}' points at external data '{tensor.location}' outside the "
                    f"model's folder; refused"
                )
            if not target.is_file():
                raise ModelLoadError(f"{path}: tensor '{tensor.name}' needs external data file '{tensor.location}', which is missing")


def _all_tensors(model: onnx_ir.Model):  # noqa: ANN202 - generator of TensorProtocol
    for graph in model.graphs():
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield value.const_value
        for node in graph:
            for attr in node.attributes.values():
                if attr.type == onnx_ir.AttributeType.TENSOR:
                    yield attr.as_tensor()


def _has_external_tensors(model: onnx_ir.Model) -> bool:
    return any(isinstance(t, onnx_ir.ExternalTensor) for t in _all_tensors(model))


def _initializer_bytes(model: onnx_ir.Model) -> int:
    return sum(t.nbytes for t in _all_tensors(model))


def _os_reason(exc: BaseException) -> str:
    """An OS error's reason without the file name it repeats; other errors' first line."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    """The first line of the innermost cause's message (onnx_ir's wrappers name only the function)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
