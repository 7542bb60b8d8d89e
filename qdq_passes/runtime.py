"""Process-wide run settings: thread counts for torch and onnxruntime, and the default seed.

An unset thread count is a trap on shared machines: on a busy 2-core machine torch's default made a
peer 16 times slower (OpenMP spin-waits). qdq-passes always sets the count explicitly.
"""

from __future__ import annotations

import dataclasses
import os
import random
import sys

import numpy as np

__all__ = ["RuntimeSettings", "configure", "settings", "default_threads", "ort_session_options", "configured_torch"]


def default_threads() -> int:
    """Half the cores this process may use, at least 1 and at most 8 (1 on a 2-core machine)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores // 2))


@dataclasses.dataclass
class RuntimeSettings:
    """The settings in force: thread count and default seed."""

    threads: int = dataclasses.field(default_factory=default_threads)
    seed: int = 0


_SETTINGS = RuntimeSettings()


def settings() -> RuntimeSettings:
    """The settings in force."""
    return _SETTINGS


def configure(threads: int | None = None, seed: int | None = None) -> RuntimeSettings:
    """Set torch's thread count (and remember it for onnxruntime sessions) and seed every RNG."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        _SETTINGS.threads = threads
    if seed is not None:
        _SETTINGS.seed = seed
    random.seed(_SETTINGS.seed)
    np.random.seed(_SETTINGS.seed % 2**32)
    global _TORCH_PENDING
    _TORCH_PENDING = True
    if "torch" in sys.modules:  # importing torch costs a second: passes that need it call configured_torch()
        configured_torch()
    return _SETTINGS


_TORCH_PENDING = True


def configured_torch():  # noqa: ANN201 - the torch module
    """Import torch; the first call after :func:`configure` applies its thread count and seed.

    Later calls change nothing, so a pass may set its own thread count (an option) and keep it,
    and calling this in a loop costs nothing.
    """
    import torch

    global _TORCH_PENDING
    if _TORCH_PENDING:
        if torch.get_num_threads() != _SETTINGS.threads:
            torch.set_num_threads(_SETTINGS.threads)
        torch.manual_seed(_SETTINGS.seed)
        _TORCH_PENDING = False
    return torch


def ort_session_options(*, optimize: bool = False):  # noqa: ANN201 - onnxruntime.SessionOptions
    """onnxruntime session options with explicit thread counts (optimisations off unless asked)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = _SETTINGS.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = (
        onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.log_severity_level = 3
    return options
