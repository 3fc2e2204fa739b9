"""Compiling the metrics' Numba kernels ahead of the first call."""
from __future__ import annotations

import numpy as np

from .confusion import confusion_matrix
from .surface import _class_distances

__all__ = ["warmup"]


def warmup() -> None:
    """Compile (or load from Numba's disk cache) the confusion kernels for every integer dtype now, and the surface
    metrics' kernels for uint8 labels.

    The first confusion matrix of a process otherwise pays it (about 3 s after
    an install, under 1 s from the cache).

    Examples
    --------
    >>> from segpost.metrics import warmup
    >>> warmup()
    """
    for dtype in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64):
        a = np.zeros(4, dtype)
        confusion_matrix(a, a, 2)
    for shape in ((3, 3), (3, 3, 3)):  # the surface kernels, for uint8 labels, both ways of measuring
        labels = np.zeros(shape, np.uint8)
        labels[1, 1] = 1
        for path in ("transform", "tree"):
            _class_distances(labels, labels, 2, (1.0,) * len(shape), (), path=path)
