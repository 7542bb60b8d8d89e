"""Where a value holds its samples: the block loop caches every value with its samples on axis 0
and finds, for each block output, the axis the model keeps them on."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["NoBatchAxis", "batch_axis", "model_layout", "num_samples"]


class NoBatchAxis(ValueError):
    """A value whose batch axis cannot be told (the batch folded into another axis: ``[T * B, C]``)."""


def batch_axis(one: Sequence[int], two: Sequence[int], name: str) -> int | None:
    """The batch axis of a value from its shapes on 1 and on 2 samples (None: it has none, the
    samples share it); :class:`NoBatchAxis` naming it when no single axis grows from 1 to 2."""
    if len(one) == len(two):
        grown = [k for k, (a, b) in enumerate(zip(one, two)) if a != b]
        if not grown:
            return None
        if len(grown) == 1 and one[grown[0]] == 1 and two[grown[0]] == 2:
            return grown[0]
    raise NoBatchAxis(f"value {name!r} has shape {list(one)} on 1 sample and {list(two)} on 2: no batch axis")


def model_layout(array: np.ndarray, start: int, stop: int, axis: int | None) -> np.ndarray:
    """Samples ``start:stop`` of a cached value (samples on axis 0) in the model's layout."""
    if axis is None:
        return array[0, ...]  # a 0-d array, not a numpy scalar
    part = array[start:stop]
    return np.moveaxis(part, 0, axis) if axis else part


def num_samples(feeds: Sequence[np.ndarray], axes: Sequence[int | None]) -> int:
    """The number of samples in cached values (1 when none has a batch axis and there are none)."""
    return next((f.shape[0] for f, a in zip(feeds, axes) if a is not None), feeds[0].shape[0] if feeds else 1)
