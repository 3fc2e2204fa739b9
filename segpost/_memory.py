"""The compiled kernels' cache of large buffers.

A dense CRF allocates its lattices, splat buffers and outputs afresh for
every image. Fresh memory is faulted in page by page on first touch, which
costs more than a couple of mean-field iterations on a 512x512 image, so
freed buffers of 1 MiB and more are kept and reused by the next call (up to
a cap, 1 GiB by default; ``SEGPOST_MEMORY_CACHE_MB`` sets it at import). The
memory stays with the process until released here or reused.
"""
from __future__ import annotations

import numbers
import os

from . import _C
from ._validation import environment_number

__all__ = ["cached_memory_bytes", "release_cached_memory", "set_memory_cache_limit"]


# ------------------------------------------------------------------ the working-set limit
#
# One rule for every function that allocates in proportion to its input (the
# CRF, the lattice filters, the resizers): the working set is estimated from
# the shapes and refused with a MemoryError naming its size before anything
# is allocated, so that a huge request fails at once instead of after
# gigabytes of numpy or torch allocations.

def _gigabytes(raw: str) -> float:
    gigabytes = float(raw)
    if not gigabytes > 0:  # also refuses NaN
        raise ValueError(raw)
    return gigabytes


def memory_limit_bytes() -> float:
    """Largest working set a call may plan: ``SEGPOST_MAX_MEMORY_GB`` (``inf``: no limit) or 75% of physical memory.

    A value that is not a positive number is ignored with a RuntimeWarning.
    """
    gigabytes = environment_number("SEGPOST_MAX_MEMORY_GB", _gigabytes, "a positive number of GiB, or inf")
    if gigabytes is not None:
        return gigabytes * 2**30
    try:
        return int(0.75 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 16 * 2**30


def check_working_set(nbytes: float, what: str, fix: str) -> None:
    """MemoryError (naming ``what``, its size, the limit and ``fix``) when ``nbytes`` exceeds the limit."""
    limit = memory_limit_bytes()
    if nbytes > limit:
        raise MemoryError(f"{what} needs about {nbytes / 2**30:.1f} GiB, above the limit of {limit / 2**30:.1f} GiB; "
                          f"{fix}, or raise SEGPOST_MAX_MEMORY_GB")


def cached_memory_bytes() -> int:
    """Bytes of freed buffers the kernels keep for reuse.

    Returns
    -------
    int
        At most the cache limit (``set_memory_cache_limit``, ``SEGPOST_MEMORY_CACHE_MB``).

    Examples
    --------
    >>> import segpost
    >>> segpost.cached_memory_bytes() >= 0
    True
    """
    return int(_C.cached_memory_bytes())


def release_cached_memory() -> None:
    """Return every cached buffer to the operating system.

    Examples
    --------
    >>> import segpost
    >>> segpost.release_cached_memory()
    >>> segpost.cached_memory_bytes()
    0
    """
    _C.release_cached_memory()


def set_memory_cache_limit(nbytes: int) -> None:
    """Cap the bytes of freed buffers kept for reuse (0 keeps none).

    Parameters
    ----------
    nbytes : int
        The cap, >= 0. Cached buffers beyond it are released at once.

    Examples
    --------
    >>> import segpost
    >>> segpost.set_memory_cache_limit(256 * 2**20)
    >>> segpost.cached_memory_bytes() <= 256 * 2**20
    True
    >>> segpost.set_memory_cache_limit(2**30)
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, numbers.Integral):
        raise TypeError(f"nbytes must be an integer, got {type(nbytes).__name__}")
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    _C.set_memory_cache_limit(min(int(nbytes), 2**62))


def _megabytes(raw: str) -> float:
    megabytes = float(raw)
    if not 0 <= megabytes < float("inf"):  # also refuses NaN
        raise ValueError(raw)
    return megabytes


def _init_from_environment() -> None:
    megabytes = environment_number("SEGPOST_MEMORY_CACHE_MB", _megabytes, "a number of MiB >= 0")
    if megabytes is not None:
        _C.set_memory_cache_limit(min(int(megabytes * 2**20), 2**62))


_init_from_environment()
