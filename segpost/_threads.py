"""Thread count of segpost's compiled kernels.

Results never depend on it: every kernel writes each output element from one
thread in a fixed order.
"""
from __future__ import annotations

import numbers
import os
import sys

from . import _C
from ._validation import environment_number

__all__ = ["get_num_threads", "set_num_threads"]


def get_num_threads() -> int:
    """Number of threads the compiled kernels use (all cores by default).

    Returns
    -------
    int
        ``set_num_threads``'s value, or ``SEGPOST_NUM_THREADS``, or the cores.

    Examples
    --------
    >>> import segpost
    >>> segpost.get_num_threads() >= 1
    True
    """
    return int(_C.get_num_threads())


def set_num_threads(n: int) -> None:
    """Set how many threads the compiled kernels use.

    The environment variable ``SEGPOST_NUM_THREADS`` sets the same value at
    import time. Results are bit-for-bit identical whatever the thread count.

    Parameters
    ----------
    n : int
        Number of threads, at least 1.

    Raises
    ------
    TypeError
        If ``n`` is not an integer.
    ValueError
        If ``n < 1``.

    Examples
    --------
    >>> import segpost
    >>> previous = segpost.get_num_threads()
    >>> segpost.set_num_threads(1)
    >>> segpost.get_num_threads()
    1
    >>> segpost.set_num_threads(previous)
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n must be an integer, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    _C.set_num_threads(int(min(n, 1024)))


def _positive_int(raw: str) -> int:
    n = int(raw)
    if n < 1:
        raise ValueError(raw)
    return n


def _init_from_environment() -> None:
    n = environment_number("SEGPOST_NUM_THREADS", _positive_int, "a positive integer")
    if n is not None:
        set_num_threads(n)


_init_from_environment()


# torch's CPU ops run on an OpenMP pool that a forked child inherits broken: once the parent has used it,
# a parallel torch op in the child waits forever for threads that are gone (segpost's own pool is rebuilt
# after fork). DataLoader workers set torch to one thread; a multiprocessing pool's workers do not.
_forked_child = False


def _note_fork():
    global _forked_child
    _forked_child = True


os.register_at_fork(after_in_child=_note_fork)


def torch_fork_safe():
    """Call before segpost's own torch CPU ops (resizing): in a forked child, torch runs on one thread, as in a
    DataLoader worker, instead of hanging on the parent's thread pool."""
    if _forked_child and "torch" in sys.modules:
        import torch

        if torch.get_num_threads() > 1:
            torch.set_num_threads(1)
