"""The C++ permutohedral lattice (``csrc/cpu/lattice/``): a validating wrapper for users, and
:meth:`PermutohedralLattice.filter_rows`, the trusting filter of the lattice interface
(``segpost.lattice``) that the CRF calls.
"""
from __future__ import annotations

import numpy as np

from .. import _C
from .._validation import MAX_FILTER_VALUE, check_finite, check_float_dtype, is_torch_tensor, like_input, to_numpy

__all__ = ["PermutohedralLattice", "MAX_LATTICE_DIM", "lattice_bytes"]

#: Largest feature dimension the lattice accepts.
MAX_LATTICE_DIM: int = int(_C.max_lattice_dim)


def lattice_bytes(num_points: int, dim: int, channels: int = 0) -> int:
    """Estimated bytes of a lattice over ``num_points`` points of ``dim`` features, filtering ``channels`` values.

    Each corner's vertex, splat row and weight, a byte of prefetch hints per
    point and the float64 features; with ``channels``, the values, the
    output and the vertex rows the filter splats into and blurs.
    """
    corners = num_points * (dim + 1)
    nbytes = corners * 12 + num_points + num_points * dim * 8
    return nbytes + channels * (num_points * 8 + corners * 8)


class PermutohedralLattice:
    """A permutohedral lattice built once over a point set, then used to filter many signals.

    Filtering approximates the Gaussian sum
    ``out_i ~ sum_j exp(-|f_i - f_j|^2 / 2) v_j`` in O(N d^2) time, following
    Adams, Baek & Davis (2010) [Adams2010]_. Construction hashes each point's enclosing
    simplex once; :meth:`filter` then does no hashing, so building one lattice
    per image and filtering every label and iteration through it is cheap.

    Parameters
    ----------
    features : (N, d) array_like or torch.Tensor
        Point positions already divided by their bandwidths (so the kernel has
        unit standard deviation), float16/float32/float64, ``1 <= d <= 64``.
        Any strides are accepted; the caller's array is never modified.
        Features are moved towards the origin by whole lattice periods (in
        float64), which leaves the filter unchanged and keeps far-off features
        precise. float32 and float64 are read in place, without a copy.

    Attributes
    ----------
    num_points : int
        N.
    dim : int
        d.
    num_vertices : int
        Number of distinct lattice vertices touched (at most ``N * (d + 1)``).
    nbytes : int
        Memory held by the lattice, in bytes.

    Raises
    ------
    TypeError
        If ``features`` is not a real floating array.
    ValueError
        If ``features`` is not 2-D, is empty, contains NaN or infinity, has
        ``d`` outside ``[1, 64]``, or spans so large a range that the lattice's
        int32 keys would overflow (divide by larger bandwidths).

    Notes
    -----
    The unnormalised output equals the Gaussian sum only up to a constant that
    depends on the lattice's spline blur; use ``normalize=True`` for a true
    weighted average (the constant cancels). Measured against an exact
    O(N^2) filter on random point sets (``tests/test_lattice.py``), the
    normalised error grows with ``d``; the bound we test is tabled in
    ``docs/performance.md``.

    References
    ----------
    .. [Adams2010] A. Adams, J. Baek, M. A. Davis. "Fast High-Dimensional Filtering
       Using the Permutohedral Lattice". Computer Graphics Forum 29(2), 2010.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost import PermutohedralLattice
    >>> rng = np.random.default_rng(0)
    >>> features = rng.uniform(0, 4, size=(200, 3))
    >>> lattice = PermutohedralLattice(features)
    >>> lattice.num_points, lattice.dim
    (200, 3)
    >>> smoothed = lattice.filter(rng.normal(size=(200, 5)), normalize=True)
    >>> smoothed.shape, smoothed.dtype
    ((200, 5), dtype('float32'))
    >>> ones = lattice.filter(np.ones(200), normalize=True)
    >>> bool(np.allclose(ones, 1.0))
    True
    """

    def __init__(self, features):
        self._build(features, row_length=0)

    @classmethod
    def _for_grid(cls, features, row_length):
        """A lattice over grid points in raster order, rows of `row_length` points.

        Same filter, vertices numbered in the tile order the mean field sweeps
        (so a tile's vertex rows lie together in memory).
        """
        lattice = cls.__new__(cls)
        lattice._build(features, row_length=row_length)
        return lattice

    def _build(self, features, *, row_length):
        arr, self._from_torch = to_numpy(features, "features")
        check_float_dtype(arr, "features")
        if arr.ndim != 2:
            raise ValueError(f"features must be a 2-D (N, d) array, got shape {tuple(arr.shape)}")
        n, d = arr.shape
        if n == 0:
            raise ValueError("features must contain at least one point, got N = 0")
        if not 1 <= d <= MAX_LATTICE_DIM:
            raise ValueError(f"features dimension d must be between 1 and {MAX_LATTICE_DIM}, got d = {d}")
        check_finite(arr, "features")
        if arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float32)
        if n * (d + 1) >= 2**31 - 1:
            raise ValueError(f"too many points for one lattice: N * (d + 1) = {n * (d + 1)} must be below 2**31")
        # The C++ side moves the features towards zero by whole lattice periods
        # (in float64, without touching this array) and checks the int32 key range exactly.
        try:
            self._lattice = _C.PermutohedralLattice(np.ascontiguousarray(arr), row_length)
        except OverflowError:
            extent = float(np.max(arr.max(axis=0) - arr.min(axis=0)))
            raise ValueError(
                f"features span too large a range for the lattice's int32 keys (largest extent {extent:.3g} "
                f"bandwidths): features must be divided by their bandwidths; use larger bandwidths"
            ) from None
        self._norm = None  # filtered ones, computed on first normalised call

    @property
    def num_points(self) -> int:
        return int(self._lattice.num_points)

    @property
    def dim(self) -> int:
        return int(self._lattice.dim)

    @property
    def num_vertices(self) -> int:
        return int(self._lattice.num_vertices)

    @property
    def nbytes(self) -> int:
        return int(self._lattice.nbytes)

    def __repr__(self) -> str:
        return (
            f"PermutohedralLattice(num_points={self.num_points}, dim={self.dim}, "
            f"num_vertices={self.num_vertices})"
        )

    # ------------------------------------------------- the lattice interface (segpost.lattice)

    #: Whether filter_rows on tensors carries autograd (no: the CRF wraps it in lattice.autograd's function).
    autograd = False

    def filter_rows(self, values, pre=None, post=None, *, transpose=False):
        """``post * K(pre * values)`` (``K^T`` with ``transpose``) of (N, C) rows, unchecked.

        The lattice interface's filter: numpy rows give float32 numpy rows, CPU
        tensors float32 tensors (no gradient); ``pre`` and ``post`` are (N,)
        float32 numpy scales or None, as :func:`segpost.crf.mean_field.normalization_scales`
        gives them for :meth:`filtered_ones`. The callers (the CRF) have
        validated the rows; :meth:`filter` is the checked entry point.
        """
        if is_torch_tensor(values):
            import torch

            rows = np.ascontiguousarray(values.detach().cpu().numpy(), dtype=np.float32)
            return torch.from_numpy(self._lattice.filter(rows, bool(transpose), pre, post))
        return self._lattice.filter(np.ascontiguousarray(values, dtype=np.float32), bool(transpose), pre, post)

    def filtered_ones(self) -> np.ndarray:
        """``K 1``: the (N,) float32 filter of a constant one, strictly positive (each point weighs itself)."""
        return self._lattice.filter_ones()

    def filter(self, values, *, normalize: bool = False, adjoint: bool = False):
        """Gaussian-filter ``values`` over the lattice's points.

        Parameters
        ----------
        values : (N,) or (N, C) array_like or torch.Tensor
            One row per point, float16/float32/float64, finite. All C channels
            are filtered together in one pass.
        normalize : bool, default False
            Divide by the filtered ones, giving a true weighted average
            (constants stay constant). The filtered ones are computed once per
            lattice and cached.
        adjoint : bool, default False
            Apply the exact transpose of the unnormalised filter (the lattice
            axes blurred in reverse order), as needed for gradients. The plain
            filter is symmetric only approximately, the adjoint exactly
            satisfies ``<u, K v> = <K^T u, v>``. Not combinable with
            ``normalize``.

        Returns
        -------
        out : ndarray or torch.Tensor
            float32, the shape of ``values``; a torch tensor if ``values`` is one.

        Raises
        ------
        TypeError
            If ``values`` is not a real floating array.
        ValueError
            If its shape does not match the lattice, it has no channels, or it
            contains NaN or infinity.

        Examples
        --------
        >>> import numpy as np
        >>> from segpost import PermutohedralLattice
        >>> lattice = PermutohedralLattice(np.linspace(0, 10, 50)[:, None])
        >>> step = (np.arange(50) >= 25).astype(np.float32)
        >>> blurred = lattice.filter(step, normalize=True)
        >>> bool(blurred[0] < 0.01 and blurred[-1] > 0.99 and 0.2 < blurred[25] < 0.8)
        True
        """
        arr, was_torch = to_numpy(values, "values")
        check_float_dtype(arr, "values")
        n = self.num_points
        if arr.ndim not in (1, 2) or arr.shape[0] != n:
            raise ValueError(
                f"values must have shape ({n},) or ({n}, C) to match the lattice's {n} points, "
                f"got {tuple(arr.shape)}"
            )
        if arr.ndim == 2 and arr.shape[1] == 0:
            raise ValueError("values must have at least one channel, got shape (N, 0)")
        if normalize and adjoint:
            raise ValueError("adjoint=True is defined for the unnormalised filter; use normalize=False")
        check_finite(arr, "values", bound=MAX_FILTER_VALUE)
        matrix = np.ascontiguousarray(arr.reshape(n, -1), dtype=np.float32)
        post_scale = self._inverse_filtered_ones() if normalize else None
        out = self._lattice.filter(matrix, bool(adjoint), None, post_scale)
        return like_input(out.reshape(arr.shape), was_torch)

    def _inverse_filtered_ones(self) -> np.ndarray:
        """(N,) 1 / (filtered constant one); finite, since each point weighs itself."""
        if self._norm is None:
            self._norm = (1.0 / self.filtered_ones()).astype(np.float32)
        return self._norm
