"""The exact Gaussian kernel of a regular grid, filtered separably: the smoothness kernel of a volume.

The smoothness kernel ``k(i, j) = exp(-|p_i - p_j|^2 / 2)`` on grid positions
``p = index * spacing / sigma`` is a product over the axes: ``K v`` is one 1-D
convolution per axis with taps ``w(t) = exp(-(t * step)^2 / 2)``, zero outside
the grid, truncated at :data:`TRUNCATE` bandwidths (scipy.ndimage's default).
The permutohedral lattice only approximates it, and on a volume builds more
vertices than there are voxels (a kernel of a few voxels, anisotropic
spacing). This module is the one home of the taps and of the rule that picks
the separable filter (:func:`smoothness_method`); it has the lattice
interface (``segpost.lattice``) twice: :class:`GridGaussian` on the C++
kernel (CPU, numpy rows) and :class:`TorchGridGaussian` in torch ops on any
device (the device path), held equal by the tests.
"""
from __future__ import annotations

import numpy as np

from .. import _C

__all__ = ["SMOOTHNESS_METHODS", "TRUNCATE", "MAX_SEPARABLE_RADIUS", "separable_taps", "smoothness_method",
           "GridGaussian", "TorchGridGaussian"]

SMOOTHNESS_METHODS = ("auto", "lattice", "separable")
#: Bandwidths at which the kernel is cut (taps beyond it, below exp(-8) = 3.4e-4 of the centre, are dropped).
TRUNCATE = 4.0
#: "auto" filters separably only where every axis's kernel reaches at most this many points either side
#: (bandwidths up to about 4 voxels): the cost grows with the taps, the lattice's shrinks with the bandwidth.
MAX_SEPARABLE_RADIUS = 16


def separable_taps(steps, shape):
    """Per axis, the float32 taps ``w(0), ..., w(R)`` with ``w(t) = exp(-(t * step)^2 / 2)``.

    ``steps``: the positions' spacing per axis in bandwidths (``spacing / sigma``,
    in float64); ``R`` is ``TRUNCATE / step`` rounded (scipy.ndimage.gaussian_filter's
    radius for a bandwidth of ``1 / step`` points), at most ``size - 1``.
    """
    taps = []
    for step, size in zip(steps, shape):
        step = float(step)
        if not (0.0 < step < float("inf")):
            raise ValueError(f"steps must be positive and finite (spacing / sigma per axis), got {tuple(steps)}")
        radius = min(int(size) - 1, int(TRUNCATE / step + 0.5))
        t = np.arange(radius + 1, dtype=np.float64)
        taps.append(np.exp(-0.5 * (t * step) ** 2).astype(np.float32))
    return taps


def smoothness_method(method, shape, steps):
    """"lattice" or "separable": how a smoothness kernel on a grid of ``shape`` with position ``steps`` is filtered.

    "auto" is the separable exact Gaussian on volumes (3-D grids) whose kernel
    spans at most :data:`MAX_SEPARABLE_RADIUS` points either side on every
    axis, and the lattice otherwise: on images the lattice gives pydensecrf's
    numbers, and is cheap there.
    """
    if method not in SMOOTHNESS_METHODS:
        raise ValueError(f"method must be one of {SMOOTHNESS_METHODS}, got {method!r}")
    if method != "auto":
        return method
    radii = [len(t) - 1 for t in separable_taps(steps, shape)]
    return "separable" if len(shape) == 3 and max(radii) <= MAX_SEPARABLE_RADIUS else "lattice"


class GridGaussian:
    """The exact grid Gaussian on the C++ kernel: the lattice interface for numpy rows (the CPU mean field).

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.lattice.grid_gaussian import GridGaussian
    >>> kernel = GridGaussian((4, 5), steps=(1.0, 0.5))
    >>> ones = kernel.filtered_ones()
    >>> ones.shape, bool(ones.min() >= 1.0)
    ((20,), True)
    """

    #: filter_rows carries no autograd (the CPU CRF does not differentiate).
    autograd = False
    #: What DenseCRF.pairwise_terms reports as the term's method.
    method = "separable"

    def __init__(self, shape, steps):
        self.shape = tuple(int(s) for s in shape)
        self.taps = separable_taps(steps, self.shape)
        self._lattice = _C.SeparableGaussian(list(self.shape), [t.tolist() for t in self.taps])

    @property
    def num_points(self) -> int:
        return int(self._lattice.num_points)

    @property
    def dim(self) -> int:
        return len(self.shape)

    @property
    def num_vertices(self) -> int:
        """Each point is its own vertex."""
        return self.num_points

    @property
    def nbytes(self) -> int:
        return int(self._lattice.nbytes)

    def __repr__(self) -> str:
        return f"GridGaussian(shape={self.shape}, radii={tuple(len(t) - 1 for t in self.taps)})"

    def filter_rows(self, values, pre=None, post=None, *, transpose=False):
        """``post * K(pre * values)`` of (N, C) float32 rows (K is symmetric: ``transpose`` changes nothing)."""
        rows = np.asarray(values, np.float32)
        if pre is not None:
            rows = rows * pre[:, None]
        out = self._lattice.filter(np.ascontiguousarray(rows, dtype=np.float32))
        return out if post is None else out * post[:, None]

    def filtered_ones(self) -> np.ndarray:
        """``K 1``, (N,) float32, at least 1 (each point weighs itself)."""
        return self._lattice.filter(np.ones((self.num_points, 1), np.float32))[:, 0]


class TorchGridGaussian:
    """The exact grid Gaussian in torch ops (``conv1d`` per axis) on any device, through autograd.

    ``images`` > 1: the rows are that many grids' points, one grid after the other.
    """

    autograd = True
    method = "separable"

    def __init__(self, shape, steps, *, device, images=1):
        import torch

        self.shape = tuple(int(s) for s in shape)
        self.images = int(images)
        self._kernels = []
        for taps in separable_taps(steps, self.shape):
            full = np.concatenate([taps[:0:-1], taps])  # w(R) .. w(1), w(0), w(1) .. w(R)
            self._kernels.append(torch.tensor(full, dtype=torch.float32, device=device).reshape(1, 1, -1))

    @property
    def num_points(self) -> int:
        return int(np.prod(self.shape)) * self.images

    @property
    def num_vertices(self) -> int:
        return self.num_points

    def filter_rows(self, values, pre=None, post=None, *, transpose=False):
        import torch.nn.functional as F

        rows = values if pre is None else values * pre[:, None]
        channels = rows.shape[1]
        # (images * N, C) -> (images, C, *shape): each axis's convolution on lines of one channel.
        grid = rows.reshape(self.images, *self.shape, channels).movedim(-1, 1)
        ndim = len(self.shape)
        for axis in reversed(range(ndim)):  # the last axis first, as the C++ kernel
            kernel = self._kernels[axis]
            lines = grid.movedim(2 + axis, -1)
            moved = lines.shape
            radius = (kernel.shape[-1] - 1) // 2
            lines = F.conv1d(lines.reshape(-1, 1, moved[-1]).to(kernel.dtype), kernel, padding=radius)
            grid = lines.reshape(moved).movedim(-1, 2 + axis)
        out = grid.movedim(1, -1).reshape(-1, channels).to(values.dtype)
        return out if post is None else out * post[:, None]

    def filtered_ones(self):
        import torch

        ones = torch.ones(self.num_points, 1, device=self._kernels[0].device)
        return self.filter_rows(ones)[:, 0]
