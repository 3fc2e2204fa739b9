"""JIT options for segpost's Numba kernels, in one place.

Kernels compile on first use (nothing at import), are cached on disk
(``cache=True``) and release the GIL (``nogil=True``) so that segpost's own
thread pool can run them on chunks in parallel.
"""
import numba

jit = numba.njit(cache=True, nogil=True, fastmath=False, boundscheck=False)
