"""The activation cache of the block loop: in memory up to a budget, then in memory-mapped files."""

from __future__ import annotations

import tempfile

import numpy as np
import onnx_ir

__all__ = ["ActivationCache"]


class ActivationCache:
    """Activations of live values (samples on axis 0), spilled to disk past ``budget_bytes``."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.used = 0
        self.arrays: dict[onnx_ir.Value, np.ndarray] = {}
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._count = 0

    def __contains__(self, value: onnx_ir.Value) -> bool:
        return value in self.arrays

    def put(self, value: onnx_ir.Value, array: np.ndarray) -> None:
        """Keep ``array`` as ``value``'s samples (in a file when the budget is spent)."""
        if self.used + array.nbytes > self.budget and array.nbytes > 0:
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="qdq-adaround-")
            self._count += 1
            mm = np.lib.format.open_memmap(f"{self._tmp.name}/{self._count}.npy", mode="w+", dtype=array.dtype,
                                           shape=array.shape)
            mm[...] = array
            self.arrays[value] = mm
            return
        self.arrays[value] = array
        self.used += array.nbytes

    def get(self, value: onnx_ir.Value) -> np.ndarray:
        """The samples of ``value``."""
        return self.arrays[value]

    def drop(self, value: onnx_ir.Value) -> None:
        """Forget ``value`` (no later block reads it)."""
        array = self.arrays.pop(value, None)
        if array is not None and not isinstance(array, np.memmap):
            self.used -= array.nbytes

    def close(self) -> None:
        """Forget everything and delete the spill files."""
        self.arrays.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
