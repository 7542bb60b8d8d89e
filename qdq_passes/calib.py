"""Calibration data: the samples AdaRound (and other learning passes) feed through the model.

Sources accepted by :func:`load_calibration`:

1. An ``.npz`` file mapping each graph input name to an array, samples on axis 0.
2. A folder of such files: every ``*.npz`` in it, sorted by name, concatenated along axis 0
   (other files are ignored).
3. A Python mapping ``{name: array}`` (one batch), or an iterable of such mappings (concatenated).

Each source is checked against the model's graph inputs (inputs backed by an initializer are
optional): every required input present, no unknown input (with a close-match suggestion), the
model's dtype exactly, the model's rank, and the model's size on every axis but the batch axis
(symbolic or unknown dims accept anything). The batch axis is axis 0 unless ``batch_axes`` says
otherwise for an input (a recurrent state ``[2, B, 128]``: 1; a sample rate given once for all
samples: None). Its size in the model is not checked (a model exported with batch 1 still takes 32
samples), but all inputs must agree on it. Every failure raises :class:`CalibrationError`, one line
naming the file (or item) and the input; NaN or Inf in float data is refused with the sample's
index.

:class:`CalibrationData` holds every input with its samples on axis 0, whatever the model's layout:
an input batched on axis ``k`` is moved there, an input without batch axis is repeated for every
sample (a stride-0 view); ``batch_axes`` keeps the model's layout to restore.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Union

import numpy as np
import onnx_ir

from qdq_passes.infra.errors import OptionError, QdqError
from qdq_passes.infra.options import option

__all__ = ["calib_option", "calib_batch_axis_option", "max_samples_option", "CalibrationData", "CalibrationError", "CalibrationSource", "load_calibration", "parse_batch_axes",
           "check_batch_axis_option"]

logger = logging.getLogger(__name__)

#: What :func:`load_calibration` reads.
CalibrationSource = Union[str, os.PathLike, Mapping[str, Any], Iterable[Mapping[str, Any]], "CalibrationData"]


class CalibrationError(QdqError):
    """Calibration data that cannot be used with the model; the message names the file and input."""


@dataclasses.dataclass
class CalibrationData:
    """Validated calibration inputs: ``inputs[name]`` holds every sample, batch on axis 0;
    ``batch_axes[name]`` is the batch axis in the model (None: one value for every sample)."""

    inputs: dict[str, np.ndarray]
    batch_axes: dict[str, int | None] = dataclasses.field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        """The number of samples (the common size of axis 0)."""
        return next(iter(self.inputs.values())).shape[0] if self.inputs else 0

    def __len__(self) -> int:
        return self.num_samples

    def batches(self, batch_size: int, *, drop_last: bool = False) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of ``batch_size`` samples in the model's layout (views, in order); the last is shorter
        unless ``drop_last``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        n = self.num_samples
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield {name: _model_layout(array[start : start + batch_size], self.batch_axes.get(name, 0))
                   for name, array in self.inputs.items()}


@dataclasses.dataclass(frozen=True)
class _InputSpec:
    name: str
    dtype: np.dtype | None  # None: unknown element type
    dims: tuple[int | None, ...] | None  # None: unknown shape; None dim: symbolic or unknown
    required: bool


def parse_batch_axes(entries: Iterable[str]) -> dict[str, int | None]:
    """``["state=1", "sr=none"]`` -> ``{"state": 1, "sr": None}``; ``ValueError`` naming a bad entry."""
    axes: dict[str, int | None] = {}
    for entry in entries:
        name, sep, axis = entry.rpartition("=")
        if not sep or not name:
            raise ValueError(f"batch axis {entry!r}: expected NAME=AXIS (AXIS an integer or 'none')")
        if axis.lower() == "none":
            axes[name] = None
        elif axis.lstrip("-").isdigit():
            axes[name] = int(axis)
        else:
            raise ValueError(f"batch axis {entry!r}: AXIS must be an integer or 'none', got {axis!r}")
    return axes


def calib_option() -> Any:
    """The ``calib`` field of a pass that reads calibration data."""
    return option(None, "calibration data: .npz or a folder of .npz (qdq-opt --calib fills it)", input_path=True)


def calib_batch_axis_option() -> Any:
    """The ``calib-batch-axis`` field (check it with :func:`check_batch_axis_option`)."""
    return option((), "NAME=AXIS for calibration inputs whose batch is not on axis 0 (AXIS 'none': one value "
                  "for every sample); qdq-opt --calib-batch-axis fills it")


def max_samples_option() -> Any:
    """The ``max-samples`` field."""
    return option(0, "use at most this many calibration samples (0: all)", at_least=0)


def check_batch_axis_option(entries: Iterable[str]) -> None:
    """Raise :class:`OptionError` (key ``calib-batch-axis``) if an entry does not parse."""
    try:
        parse_batch_axes(entries)
    except ValueError as exc:
        raise OptionError(f"option 'calib-batch-axis': {exc}", key="calib-batch-axis") from None


def load_calibration(
    source: CalibrationSource, model: onnx_ir.Model, *, max_samples: int | None = None,
    batch_axes: Mapping[str, int | None] | None = None,
) -> CalibrationData:
    """Read and check calibration data for ``model`` (see the module docstring for the sources).

    ``max_samples`` keeps the first samples only (files past it are not read); ``batch_axes``
    names inputs whose batch is not on axis 0 (None: no batch axis, one value for every sample).
    """
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be at least 1, got {max_samples}")
    specs = _input_specs(model)
    if isinstance(source, CalibrationData) and batch_axes is None:
        batch_axes = {name: axis for name, axis in source.batch_axes.items() if axis != 0}
    axes = dict(batch_axes or {})
    for name, axis in axes.items():
        if name not in specs:
            hint = difflib.get_close_matches(name, list(specs), n=1)
            tail = f"; did you mean '{hint[0]}'?" if hint else f" (graph inputs: {', '.join(specs) or 'none'})"
            raise CalibrationError(f"batch axis of unknown input '{name}'{tail}")
        dims = specs[name].dims
        if axis is not None and dims is not None and not -len(dims) <= axis < len(dims):
            raise CalibrationError(f"batch axis {axis} of input '{name}' is out of range for its rank {len(dims)}")
        if axis is not None and dims is not None:
            axes[name] = axis % len(dims)
    if isinstance(source, CalibrationData):
        source = {name: _model_layout(a, source.batch_axes.get(name, 0)) for name, a in source.inputs.items()}
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        chunks, where = _path_chunks(path), str(path)
    elif isinstance(source, Mapping):
        chunks: Iterable[tuple[str, Mapping[str, Any]]] = [("calibration data", source)]
        where = "calibration data"
    elif isinstance(source, Iterable):
        chunks, where = _iterable_chunks(source), "calibration data"
    else:
        raise CalibrationError(f"calibration data must be an .npz file, a folder or an iterable of dicts, not {type(source).__name__}")

    parts: dict[str, list[np.ndarray]] = {}
    shared: dict[str, np.ndarray] = {}
    total = 0
    for label, feed in chunks:
        arrays = _check(feed, specs, label, axes)
        for name in [n for n in arrays if n in axes and axes[n] is None]:
            value = arrays.pop(name)
            if name in shared and not np.array_equal(shared[name], value):
                raise CalibrationError(f"{label}: input '{name}' has no batch axis but differs from the first file's")
            shared.setdefault(name, value)
        size = next(iter(arrays.values())).shape[0] if arrays else 0
        if max_samples is not None:
            size = min(size, max_samples - total)
            arrays = {name: a[:size] for name, a in arrays.items()}
        for name, array in arrays.items():
            parts.setdefault(name, []).append(array)
        total += size
        if max_samples is not None and total >= max_samples:
            break
    if total == 0:
        raise CalibrationError(f"{where}: contains no samples" + (" (every input has batch axis none)" if shared else ""))
    inputs = {name: arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0) for name, arrays in parts.items()}
    inputs.update({name: np.broadcast_to(value[None], (total, *value.shape)) for name, value in shared.items()})
    inputs = {v.name: inputs[v.name] for v in model.graph.inputs if v.name in inputs}
    logger.debug("calibration data from %s: %d samples of %s", where, total, ", ".join(inputs))
    return CalibrationData(inputs, {name: axes.get(name, 0) for name in inputs})


def _model_layout(array: np.ndarray, axis: int | None) -> np.ndarray:
    """One input of :class:`CalibrationData` back in the model's layout (the inverse of loading)."""
    return array[0, ...] if axis is None else np.moveaxis(array, 0, axis)


def _input_specs(model: onnx_ir.Model) -> dict[str, _InputSpec]:
    specs = {}
    for value in model.graph.inputs:
        dtype = value.dtype.numpy() if value.dtype is not None else None
        dims = None
        if value.shape is not None:
            dims = tuple(d if isinstance(d, int) else None for d in value.shape)
        specs[value.name] = _InputSpec(value.name, dtype, dims, required=value.const_value is None)
    return specs


def _path_chunks(path: Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if not path.exists():
        raise CalibrationError(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".npz")
        if not files:
            raise CalibrationError(f"{path}: the folder holds no .npz files")
        for file in files:
            yield str(file), _read_npz(file)
    else:
        yield str(path), _read_npz(path)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file (no pickles), or a :class:`CalibrationError` naming it."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if not zipfile.is_zipfile(path):
            kind = "a .npy array" if magic == b"\x93NUMPY" else "not an .npz archive"
            raise CalibrationError(f"{path}: {kind}; expected an .npz mapping graph input names to arrays")
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CalibrationError(f"{path}: unreadable .npz archive ({reason})") from None


def _iterable_chunks(items: Iterable[Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for k, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise CalibrationError(f"calibration item {k}: a {type(item).__name__}, expected a dict of input name -> array")
        yield f"calibration item {k}", item


def _check(feed: Mapping[str, Any], specs: dict[str, _InputSpec], where: str,
           axes: Mapping[str, int | None]) -> dict[str, np.ndarray]:
    """One chunk checked against the graph inputs; returns the arrays in graph-input order, each
    batched one with its batch moved to axis 0."""
    for name in feed:
        if name not in specs:
            hint = difflib.get_close_matches(str(name), list(specs), n=1)
            tail = f"; did you mean '{hint[0]}'?" if hint else f" (graph inputs: {', '.join(specs) or 'none'})"
            raise CalibrationError(f"{where}: unknown input '{name}'{tail}")
    arrays: dict[str, np.ndarray] = {}
    batch: tuple[str, int] | None = None
    for spec in specs.values():
        if spec.name not in feed:
            if spec.required:
                raise CalibrationError(f"{where}: input '{spec.name}' is missing (has: {', '.join(map(str, feed)) or 'nothing'})")
            continue
        array = np.asarray(feed[spec.name])
        axis = axes.get(spec.name, 0)
        if spec.dtype is not None and array.dtype != spec.dtype:
            raise CalibrationError(f"{where}: input '{spec.name}' is {array.dtype}, the model expects {spec.dtype}")
        if axis is None:
            if spec.dims is not None and (array.ndim != len(spec.dims) or any(
                    d is not None and d != s for d, s in zip(spec.dims, array.shape))):
                raise CalibrationError(f"{where}: input '{spec.name}' has shape {list(array.shape)}, the model "
                                       f"expects {_show_dims(spec.dims)} (no batch axis: one value for every sample)")
            _check_finite(array, spec.name, where, batched=False)
            arrays[spec.name] = array
            continue
        if array.ndim == 0:
            raise CalibrationError(f"{where}: input '{spec.name}' is a scalar; samples go on axis 0 "
                                   f"(or declare it without batch axis: --calib-batch-axis {spec.name}=none)")
        if spec.dims is not None:
            if len(spec.dims) == 0:
                raise CalibrationError(f"{where}: input '{spec.name}' is a scalar in the model, so it has no batch "
                                       f"axis (declare it: --calib-batch-axis {spec.name}=none)")
            if array.ndim != len(spec.dims):
                raise CalibrationError(
                    f"{where}: input '{spec.name}' has shape {list(array.shape)}, the model expects rank "
                    f"{len(spec.dims)} {_show_dims(spec.dims)} (batch on axis {axis})"
                )
            if any(d is not None and d != s for k, (d, s) in enumerate(zip(spec.dims, array.shape)) if k != axis):
                raise CalibrationError(
                    f"{where}: input '{spec.name}' has shape {list(array.shape)}, the model expects "
                    f"{_show_dims(spec.dims)} (axis {axis} is the batch and may differ)"
                )
        if axis >= array.ndim:
            raise CalibrationError(f"{where}: input '{spec.name}' has rank {array.ndim}, no batch axis {axis}")
        array = np.moveaxis(array, axis, 0) if axis else array
        _check_finite(array, spec.name, where, batched=True)
        if batch is None:
            batch = (spec.name, array.shape[0])
        elif array.shape[0] != batch[1]:
            raise CalibrationError(
                f"{where}: input '{spec.name}' has {array.shape[0]} samples but '{batch[0]}' has {batch[1]}"
            )
        arrays[spec.name] = array
    return arrays


def _check_finite(array: np.ndarray, name: str, where: str, *, batched: bool) -> None:
    """NaN or Inf in calibration data is refused, naming the sample (it silently skews every loss)."""
    if not np.issubdtype(array.dtype, np.floating) or bool(np.isfinite(array).all()):
        return
    if not batched or array.ndim == 0:
        raise CalibrationError(f"{where}: input '{name}' holds NaN or Inf")
    bad = ~np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1)
    first = int(np.argmax(bad))
    raise CalibrationError(f"{where}: input '{name}' holds NaN or Inf in sample {first} "
                           f"({int(bad.sum())} of {array.shape[0]} samples)")


def _show_dims(dims: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
