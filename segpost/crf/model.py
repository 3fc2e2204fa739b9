"""The general dense CRF: any unary, any number of Gaussian pairwise terms."""
from __future__ import annotations

import numbers
import os

import numpy as np

from .. import _C
from .._validation import (
    FLOAT32_MAX, MAX_CRF_SCORE, MIN_BANDWIDTH, channels_last, check_finite, check_float_dtype, check_int, like_input,
    on_device, per_axis, to_numpy,
)
from ..lattice import MAX_LATTICE_DIM, PermutohedralLattice
from ..lattice.grid_gaussian import SMOOTHNESS_METHODS, GridGaussian, smoothness_method
from .inputs import check_memory, padded_labels
from .mean_field import NORMALIZATIONS, normalization_scales

__all__ = ["DenseCRF", "KERNEL_TYPES", "NORMALIZATIONS"]

KERNEL_TYPES = ("const", "diag", "full")
_POTTS, _DIAGONAL, _MATRIX = 0, 1, 2


class _GridLatticeCache:
    """The last few smoothness-kernel lattices, keyed by grid shape and bandwidths.

    A Gaussian term on grid positions depends on the image's size and the
    bandwidths alone, not on its content: an evaluation loop over images of
    one size builds the same lattice (and its normalisation) for every image.
    Lattices are immutable once built and safe to share between CRFs and
    threads. At most ``max_entries`` lattices and ``max_bytes`` bytes are kept.
    """

    def __init__(self, max_entries=4, max_bytes=512 * 2**20):
        import collections
        import threading

        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries = collections.OrderedDict()
        self._lock = threading.Lock()
        # A child forked while another thread held the lock (a DataLoader
        # worker started mid-batch) would wait for it forever: fork takes it
        # first and both processes release it after (as the C++ memory pool).
        os.register_at_fork(before=self._lock.acquire, after_in_parent=self._lock.release,
                            after_in_child=self._lock.release)

    def get(self, key, build):
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        value = build()
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self.max_entries or (
                len(self._entries) > 1 and sum(v[0].nbytes for v in self._entries.values()) > self.max_bytes
            ):
                self._entries.popitem(last=False)
        return value

    def clear(self):
        with self._lock:
            self._entries.clear()


_grid_lattices = _GridLatticeCache()


def _as_compat(compat, num_labels: int):
    """(kind, potts weight, array or None) from a number, an (L,) or an (L, L) array."""
    if isinstance(compat, numbers.Real) and not isinstance(compat, (bool, np.bool_)):
        w = float(compat)
        if not abs(w) <= MAX_CRF_SCORE:  # also refuses NaN
            raise ValueError(f"compat must be finite and at most {MAX_CRF_SCORE:g} in magnitude, got {w}")
        return _POTTS, w, None
    arr, _ = to_numpy(compat, "compat")
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"compat must be a number or a real array, got dtype {arr.dtype}")
    check_finite(arr, "compat", bound=MAX_CRF_SCORE)
    arr = np.asarray(arr, np.float32)
    if arr.shape == (num_labels,):
        return _DIAGONAL, 0.0, np.ascontiguousarray(arr)
    if arr.shape == (num_labels, num_labels):
        # Only the symmetric part of a label compatibility acts in mean field (pydensecrf's convention).
        return _MATRIX, 0.0, np.ascontiguousarray(0.5 * (arr + arr.T), dtype=np.float32)
    raise ValueError(
        f"compat must be a number (Potts), an ({num_labels},) array (diagonal) or an "
        f"({num_labels}, {num_labels}) array (full matrix), got shape {arr.shape}"
    )


def _check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")


class DenseCRF:
    """A fully connected CRF with Gaussian pairwise potentials, solved by mean field.

    The general model for inference (any features, compatibilities,
    normalisations, N-D grids). Not to be confused with
    :class:`segpost.nn.DenseCRF`, the differentiable layer for training, or
    ``segpost.compat.pydensecrf.densecrf.DenseCRF``, pydensecrf's API.

    Energy ``E(x) = sum_i U_i(x_i) + sum_{i<j} sum_m mu_m(x_i, x_j) k_m(f^m_i, f^m_j)``
    with ``k_m(f_i, f_j) = exp(-|f_i - f_j|^2 / 2)`` on features already divided
    by their bandwidths (Krähenbühl & Koltun 2011 [Kraehenbuehl2011]_). Each pairwise term builds
    one permutohedral lattice when it is added (or, for ``add_gaussian`` on a
    volume, the exact separable Gaussian: its ``method``); every iteration and
    every label then reuses it, and all labels are filtered together.

    Parameters
    ----------
    unary : (L, N) or (L, H, W, ...) array_like or torch.Tensor
        Negative log-probabilities (any per-point constant is irrelevant), finite
        floats. A (L, H, W) unary makes ``add_gaussian``/``add_bilateral`` use
        the (H, W) grid; N-D grids (volumes, video) work the same way.

    Notes
    -----
    Mean-field update, with Q initialised to ``softmax(-U)``::

        Q <- softmax(-U - sum_m compat_m(K_m Q))

    where ``K_m`` is the (normalised) Gaussian filter of term m and
    ``compat(x)`` is ``-w x`` for a Potts weight w (neighbours that look
    alike pull a pixel toward their labels), ``v * x`` for a diagonal (L,)
    array, ``M x`` for an (L, L) matrix (symmetrised). The filter includes a
    pixel's own contribution, as in the reference implementation.

    Normalisations (per-point scales computed once from the filtered ones,
    ``n = K 1``): ``"symmetric"`` (default; ``n^-1/2 K n^-1/2``, keeps the CRF
    symmetric), ``"before"`` (``K n^-1``), ``"after"`` (``n^-1 K``, the NIPS
    2011 one), ``"none"`` (the raw sum ``K``: on a lattice its approximation
    of the Gaussian sum, as in pydensecrf; with ``add_gaussian``'s separable
    method the exact sum, about 1.3 times a volume's lattice sum, so "none"
    weighs such a term differently from pydensecrf). Kernel types ``"const"``,
    ``"diag"``, ``"full"`` name which kernel parameters would be learnt; they do
    not change inference.

    References
    ----------
    .. [Kraehenbuehl2011] P. Krähenbühl, V. Koltun. "Efficient Inference in Fully Connected CRFs
       with Gaussian Edge Potentials". NIPS 2011.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost import DenseCRF
    >>> rng = np.random.default_rng(0)
    >>> image = np.zeros((32, 32, 3), np.uint8)
    >>> image[:, 16:] = 200
    >>> truth = (image[..., 0] > 0).astype(int)
    >>> probs = np.where(rng.random((32, 32)) < 0.7, truth, 1 - truth)  # 30% of pixels flipped
    >>> unary = -np.log(np.stack([np.where(probs == 0, 0.6, 0.4), np.where(probs == 1, 0.6, 0.4)]))
    >>> crf = DenseCRF(unary)
    >>> crf.add_gaussian(3, compat=3)
    >>> crf.add_bilateral(image, 20, 10, compat=5)
    >>> q = crf.inference(5)
    >>> q.shape
    (2, 32, 32)
    >>> bool((q.argmax(0) == truth).mean() > 0.99)
    True
    """

    # The class that runs on an accelerator: segpost.crf.device's DeviceDenseCRF names itself with
    # ``class DeviceDenseCRF(DenseCRF, on_device=True)`` (and segpost.crf imports it), so that this module
    # need not import the device module that builds on it.
    _device_class = None

    def __init_subclass__(cls, *, on_device=False, **kwargs):
        super().__init_subclass__(**kwargs)
        if on_device:
            DenseCRF._device_class = cls

    def __new__(cls, *args, **kwargs):
        # A unary on an accelerator makes the CRF there; subclasses keep their own.
        unary = args[0] if args else kwargs.get("unary")
        if cls is DenseCRF and unary is not None and on_device(unary) and DenseCRF._device_class is not None:
            return object.__new__(DenseCRF._device_class)
        return object.__new__(cls)

    def __init__(self, unary):
        arr, self._torch = to_numpy(unary, "unary")
        check_float_dtype(arr, "unary")
        if arr.ndim < 2 or 0 in arr.shape:
            raise ValueError(f"unary must be a non-empty (L, N) or (L, *spatial) array, got shape {tuple(arr.shape)}")
        check_finite(arr, "unary", bound=MAX_CRF_SCORE)
        self.num_labels = int(arr.shape[0])
        self.spatial_shape = tuple(int(s) for s in arr.shape[1:])
        self.num_points = int(np.prod(self.spatial_shape))
        if self.num_points >= 2**31:
            raise ValueError(f"too many points for one CRF: {self.num_points}")
        check_memory(self.num_points, self.num_labels, [])
        # Point-major (N, L) float32: the layout the lattice filters.
        self._set_unary(arr.reshape(self.num_labels, -1).T)

    @classmethod
    def _from_point_major(cls, unary_points, spatial_shape, *, num_labels=None, torch_output=False):
        """A CRF from an already validated point-major float32 unary (no transpose).

        ``unary_points`` is (N, L), or already padded to (N, padded_labels(L))
        with ``num_labels=L`` (no copy then).
        """
        self = cls.__new__(cls)
        self._torch = torch_output
        self.num_labels = int(unary_points.shape[1] if num_labels is None else num_labels)
        self.spatial_shape = tuple(spatial_shape)
        self.num_points = int(unary_points.shape[0])
        self._set_unary(unary_points)
        return self

    def _set_unary(self, unary_points):
        self._replace_unary(unary_points)
        # Grids (images, volumes) are swept tile by tile along their last axis.
        # The lattices number their vertices in the same tile order.
        self._row_length = self.spatial_shape[-1] if len(self.spatial_shape) >= 2 else 0
        self._model = _C.MeanFieldModel(self.num_points, self.num_labels, self._row_length)
        self._feature_dims = []
        self.pairwise_terms = []  # a description dict per term, for repr and inspection
        self._term_arguments = []  # each _add_lattice call, to rebuild the model on the same lattices

    def _replace_unary(self, unary_points):
        """Store (N, L) unary rows padded to whole blocks of 8 labels, the rows the kernel reads."""
        width = padded_labels(self.num_labels)
        if unary_points.shape[1] == width and unary_points.dtype == np.float32 and unary_points.flags.c_contiguous:
            self._unary = unary_points
        else:
            self._unary = np.zeros((self.num_points, width), np.float32)
            self._unary[:, : self.num_labels] = unary_points[:, : self.num_labels]

    # ------------------------------------------------------------------ terms

    def add_pairwise(self, features, compat=1.0, *, kernel="diag", normalization="symmetric"):
        """Add a Gaussian pairwise term on arbitrary features.

        Parameters
        ----------
        features : (N, D) array_like or torch.Tensor
            Per-point features already divided by their bandwidths (float,
            finite, 1 <= D <= 64).
        compat : float, (L,) or (L, L) array, default 1.0
            Label compatibility: Potts weight, diagonal, or full matrix.
        kernel : {"const", "diag", "full"}, keyword-only
        normalization : {"symmetric", "before", "after", "none"}, keyword-only

        Raises
        ------
        ValueError, TypeError
            On a wrong shape, dtype, non-finite values or an unknown option.
        """
        _check_choice(kernel, "kernel", KERNEL_TYPES)
        _check_choice(normalization, "normalization", NORMALIZATIONS)
        kind, potts, compat_arr = _as_compat(compat, self.num_labels)
        arr, _ = to_numpy(features, "features")
        if arr.ndim != 2 or arr.shape[0] != self.num_points:
            raise ValueError(
                f"features must be ({self.num_points}, D), one row per point, got shape {tuple(arr.shape)}"
            )
        self._check_memory(arr.shape[1])
        self._add_lattice_term(arr, kind, potts, compat_arr, kernel, normalization, "pairwise")

    def add_gaussian(self, sigma, compat=3.0, *, spacing=None, kernel="diag", normalization="symmetric",
                     method="auto"):
        """Add the smoothness term on the grid positions: features ``position / sigma``.

        Parameters
        ----------
        sigma : float or sequence of float
            Bandwidth per spatial axis (in ``spacing`` units), > 0.
        compat : float, (L,) or (L, L) array, default 3.0
        spacing : sequence of float, optional, keyword-only
            Physical size of a step along each axis (e.g. voxel spacing), default 1.
        method : {"auto", "lattice", "separable"}, keyword-only
            How the kernel is filtered. "lattice": on the permutohedral lattice,
            as pydensecrf (its approximation of the Gaussian). "separable": the
            exact Gaussian, one 1-D convolution per axis, cut at 4 bandwidths
            (:mod:`segpost.lattice.grid_gaussian`). "auto" (default): separable
            on volumes (3-D grids) whose kernel reaches at most 16 voxels either
            side on every axis (bandwidths up to about 4 voxels), the lattice
            otherwise (images: pydensecrf's numbers).

        Notes
        -----
        Features are ordered from the last spatial axis to the first, (x, y) for
        an image, as in pydensecrf's ``DenseCRF2D``.

        Examples
        --------
        >>> import numpy as np
        >>> import segpost
        >>> unary = np.random.default_rng(0).random((3, 8, 32, 32), dtype=np.float32)
        >>> crf = segpost.DenseCRF(unary)
        >>> crf.add_gaussian(1.5, compat=1.0, spacing=(3.0, 0.8, 0.8))  # a volume: the exact Gaussian
        >>> crf.pairwise_terms[0]["method"]
        'separable'
        """
        sigma, spacing = self._axis_bandwidths(sigma, spacing)
        kind, potts, compat_arr = _as_compat(compat, self.num_labels)
        _check_choice(kernel, "kernel", KERNEL_TYPES)
        _check_choice(normalization, "normalization", NORMALIZATIONS)
        _check_choice(method, "method", SMOOTHNESS_METHODS)
        self._check_memory(len(self.spatial_shape))
        self._add_grid_term(sigma, spacing, kind, potts, compat_arr, kernel, normalization, method)

    def _check_memory(self, dim):
        """MemoryError before a term of ``dim`` features that would not fit with the terms already added."""
        check_memory(self.num_points, self.num_labels, self._feature_dims + [dim])

    def _add_grid_term(self, sigma, spacing, kind, potts, compat_arr, kernel, normalization, method="auto"):
        """add_gaussian's term, its arguments checked (and the memory): on the smoothness kernel of the grid
        cache (a lattice, or the separable exact Gaussian). ``sigma``, ``spacing``: float64 per spatial axis."""
        ndim = len(self.spatial_shape)
        steps = spacing / sigma
        method = smoothness_method(method, self.spatial_shape, steps)
        # The kernel depends on the grid and bandwidths only: reuse it across images (the lattice on the
        # positions' float32 steps, which its features round them to).
        key = (self.spatial_shape, tuple((steps if method == "separable" else steps.astype(np.float32)).tolist()),
               method)

        def build():
            kernel_ = (GridGaussian(self.spatial_shape, steps) if method == "separable" else
                       PermutohedralLattice._for_grid(self._grid_positions(sigma, spacing), self._row_length))
            return (*self._with_ones(kernel_), {})

        lattice, ones, scales = _grid_lattices.get(key, build)
        # Its normalisation scales are cached with it, per normalisation.
        if normalization not in scales:
            scales[normalization] = normalization_scales(ones, normalization)
        self._add_lattice(lattice, scales[normalization], ndim, kind, potts, compat_arr, kernel, normalization,
                          "gaussian")

    def add_bilateral(
        self, image, sigma, sigma_color, compat=5.0, *, spacing=None, channel_axis="auto", kernel="diag",
        normalization="symmetric",
    ):
        """Add the appearance term: features ``(position / sigma, color / sigma_color)``.

        Parameters
        ----------
        image : (H, W, ..., C) or (H, W, ...) array_like or torch.Tensor
            Any real dtype, on the CRF's grid; intensities in their own units.
        sigma : float or sequence of float
            Spatial bandwidth per axis, > 0.
        sigma_color : float or sequence of float
            Bandwidth per channel, > 0.
        compat : float, (L,) or (L, L) array, default 5.0
        channel_axis : "auto", int or None, keyword-only
            Axis of the channels: "auto" is segpost's layout rule (numpy
            channels-last, torch channels-first); None for a single-channel
            image with no channel axis.
        """
        colors, _, _ = channels_last(image, channel_axis=channel_axis, spatial_ndim=len(self.spatial_shape))
        if tuple(colors.shape[:-1]) != self.spatial_shape:
            raise ValueError(
                f"image must be on the CRF's grid {self.spatial_shape} (with channels on channel_axis="
                f"{channel_axis}), got shape {tuple(np.shape(image))}"
            )
        c = colors.shape[-1]
        ndim = len(self.spatial_shape)
        sigma_color = per_axis(sigma_color, c, "sigma_color")
        sigma, spacing = self._axis_bandwidths(sigma, spacing)
        kind, potts, compat_arr = _as_compat(compat, self.num_labels)
        _check_choice(kernel, "kernel", KERNEL_TYPES)
        _check_choice(normalization, "normalization", NORMALIZATIONS)
        if ndim + c > MAX_LATTICE_DIM:
            raise ValueError(f"too many feature dimensions: {ndim} spatial + {c} channels")
        if colors.dtype.kind == "f":
            check_finite(colors, "image", bound=FLOAT32_MAX)
        self._check_memory(ndim + c)
        self._add_image_term(colors, sigma, spacing, sigma_color, kind, potts, compat_arr, kernel, normalization)

    def _add_image_term(self, colors, sigma, spacing, sigma_color, kind, potts, compat_arr, kernel, normalization):
        """add_bilateral's term, its arguments checked (and the memory): ``colors`` (*spatial, C) on the grid,
        finite; ``sigma``, ``spacing`` float64 per spatial axis, ``sigma_color`` per channel."""
        ndim, c = len(self.spatial_shape), colors.shape[-1]
        # One (N, ndim + C) array, written in place: positions, then colours.
        features = _C.pooled_empty(self.num_points, ndim + c)  # reused memory: no page faults
        self._grid_positions(sigma, spacing, out=features[:, :ndim])
        # One column at a time: numpy divides into a strided column several
        # times faster than into a block of columns.
        flat = colors.reshape(-1, c)
        for j, bandwidth in enumerate(sigma_color.astype(np.float32)):
            np.divide(flat[:, j], bandwidth, out=features[:, ndim + j], casting="unsafe")
        self._add_lattice_term(features, kind, potts, compat_arr, kernel, normalization, "bilateral")

    def _axis_bandwidths(self, sigma, spacing):
        """(sigma, spacing) as one checked value per spatial axis; spacing defaults to 1."""
        ndim = len(self.spatial_shape)
        sigma = per_axis(sigma, ndim, "sigma")
        return sigma, np.ones(ndim) if spacing is None else per_axis(spacing, ndim, "spacing")

    def _grid_positions(self, sigma, spacing, out=None):
        """(N, ndim) float32 grid positions in bandwidths, last axis first; sigma and spacing per axis."""
        ndim = len(self.spatial_shape)
        step = (spacing / sigma).astype(np.float32)
        positions = np.empty((self.num_points, ndim), np.float32) if out is None else out
        # Last axis first: (x, y) for images, as pydensecrf orders them.
        for column, axis in enumerate(reversed(range(ndim))):
            shape = [1] * ndim
            shape[axis] = self.spatial_shape[axis]
            coordinate = (np.arange(self.spatial_shape[axis], dtype=np.float32) * step[axis]).reshape(shape)
            positions[:, column].reshape(self.spatial_shape)[...] = coordinate  # a view: no temporary
        return positions

    def _add_lattice_term(self, features, kind, potts, compat_arr, kernel, normalization, label):
        """A term on (N, D) features, its arguments checked (and the memory)."""
        lattice, ones = self._with_ones(PermutohedralLattice._for_grid(features, self._row_length))
        self._add_lattice(lattice, normalization_scales(ones, normalization), features.shape[1], kind, potts,
                          compat_arr, kernel, normalization, label)

    @staticmethod
    def _with_ones(kernel):
        """``(kernel, K 1)``, the filtered ones read-only (they may be shared through the grid cache)."""
        ones = kernel.filtered_ones()
        ones.flags.writeable = False
        return kernel, ones

    def _add_lattice(self, lattice, scales, dim, kind, potts, compat_arr, kernel, normalization, label):
        """Adds a term on `lattice` with its (pre, post) normalisation scales."""
        pre, post = scales
        self._model.add_term(lattice._lattice, pre, post, kind, potts, compat_arr)
        self._term_arguments.append((lattice, scales, dim, kind, potts, compat_arr, kernel, normalization, label))
        self._record_term(label, dim, kernel, normalization, kind, potts, compat_arr, lattice.num_vertices,
                          getattr(lattice, "method", "lattice"))

    def _record_term(self, label, dim, kernel, normalization, kind, potts, compat_arr, num_vertices,
                     method="lattice"):
        """Notes a term's feature dimension (for the memory estimates) and its description (pairwise_terms)."""
        self._feature_dims.append(dim)
        self.pairwise_terms.append(
            {"type": label, "dim": int(dim), "kernel": kernel, "normalization": normalization,
             "compat": potts if kind == _POTTS else compat_arr, "num_vertices": num_vertices,
             "method": method}
        )

    @property
    def _kernel_operators(self):
        """Each term's filter as (lattice, pre scale, post scale): post * K(pre * v). nn.DenseCRF builds its
        kernels through this class and differentiates through them."""
        return [(lattice, *scales) for lattice, scales, *_ in self._term_arguments]

    def _on_labels(self, unary_points, num_labels):
        """The same CRF on other unary rows (Potts terms only: a subset of the labels, for label pruning),
        reusing every lattice and normalisation."""
        other = DenseCRF._from_point_major(unary_points, self.spatial_shape, num_labels=num_labels,
                                           torch_output=self._torch)
        for arguments in self._term_arguments:
            if arguments[3] != _POTTS:
                raise ValueError("only Potts terms apply to any set of labels")
            other._add_lattice(*arguments)
        return other

    def _pruned(self, budget=None):
        """``(crf, kept)``: this CRF on the labels some point may still take and their indices, or
        ``(self, None)`` when none can be left out (``segpost.crf.pruning``, a pruned mass ``budget``,
        "exact" by default; Potts terms only)."""
        if not self._term_arguments or any(arguments[3] != _POTTS for arguments in self._term_arguments):
            return self, None
        from .pruning import EXACT_MASS, labels_to_keep  # Numba, imported on first use

        kernels = [(*op, arguments[4]) for op, arguments in zip(self._kernel_operators, self._term_arguments)]
        keep = labels_to_keep(self._unary, self.num_labels, kernels, EXACT_MASS if budget is None else budget)
        if keep.all() or (self.num_labels > 8 and padded_labels(keep.sum()) == padded_labels(self.num_labels)):
            return self, None  # (the kernel runs whole blocks of 8 labels: no block fewer, no time saved)
        kept = np.flatnonzero(keep)
        return self._on_labels(np.ascontiguousarray(self._unary[:, kept]), len(kept)), kept

    def _infer_pruned(self, iterations, *, prune, return_q):
        """(Q (N, L) or None, labels (N,)) of the full label set, through the pruned CRF when ``prune``
        (True, "exact" or False: ``segpost.crf.pruning.mass_budget``)."""
        budget = None
        if prune is not False and iterations > 0:
            from .pruning import mass_budget

            budget = mass_budget(prune)
        crf, kept = self._pruned(budget) if budget is not None else (self, None)
        q, labels = crf._model.infer(crf._unary, iterations, None, return_q, True)
        if kept is None:
            return q, labels
        if q is not None:  # the pruned labels' marginals are below the mass budget (pruning.py): 0
            full = np.zeros((q.shape[0], self.num_labels), np.float32)
            full[:, kept] = q[:, : len(kept)]
            q = full
        return q, kept[labels]

    # -------------------------------------------------------------- inference

    def initial_q(self):
        """``softmax(-U)``, shaped like the unary (float32)."""
        q, _ = self._model.infer(self._unary, 0)
        return self._from_points(q)

    def step(self, q):
        """One mean-field update of ``q`` (shaped like the unary); returns the new Q."""
        new_q, _ = self._model.infer(self._unary, 1, self._to_points(q))
        return self._from_points(new_q)

    def inference(self, iterations=10, *, prune=False):
        """Run ``iterations`` mean-field updates from ``softmax(-U)``.

        Parameters
        ----------
        iterations : int
        prune : bool or "exact", keyword-only, default False
            Leave out the labels no point can take (Potts terms with
            non-negative weights only; ``segpost.crf.pruning``), their
            marginals returned as 0: True within a pruned mass of 1e-2 (as
            :func:`crf_refine`), "exact" the same result up to float32 rounding.

        Returns
        -------
        q : ndarray or torch.Tensor
            float32 marginals shaped like the unary; they sum to one over labels.
        """
        q, _ = self._infer_pruned(_check_iterations(iterations), prune=prune, return_q=True)
        return self._from_points(q)

    def map(self, iterations=10, *, prune=False):
        """Most likely label per point after ``iterations`` updates (int64, the unary's spatial shape).

        ``prune`` as for :meth:`inference`.
        """
        _, labels = self._infer_pruned(_check_iterations(iterations), prune=prune, return_q=False)
        return like_input(labels.reshape(self.spatial_shape), self._torch)

    def _infer_points(self, iterations, *, return_q, prune=False):
        """(Q as (N, L) or None, labels as (N,)) without reshaping: for crf_refine."""
        return self._infer_pruned(_check_iterations(iterations), prune=prune, return_q=return_q)

    def kl_divergence(self, q):
        """KL(Q || P) up to the constant log Z, as pydensecrf computes it.

        ``sum Q log Q + sum U Q + sum_m <Q, compat_m(K_m Q)>``; it decreases as
        mean field converges (for symmetric kernels) and is a convergence check.
        """
        qp = self._to_points(q).astype(np.float64)
        entropy = float(np.sum(qp * np.log(np.maximum(qp, 1e-20))))
        unary = float(np.sum(self._unary[:, : self.num_labels] * qp))
        pairwise = float(np.sum(qp * self._model.messages(qp.astype(np.float32))))
        return entropy + unary + pairwise

    def _to_points(self, q):
        arr, _ = to_numpy(q, "q")
        check_float_dtype(arr, "q")
        if arr.shape not in ((self.num_labels, self.num_points), (self.num_labels, *self.spatial_shape)):
            raise ValueError(f"q must be shaped like the unary {(self.num_labels, *self.spatial_shape)}, got {arr.shape}")
        check_finite(arr, "q", bound=FLOAT32_MAX)
        return np.ascontiguousarray(arr.reshape(self.num_labels, -1).T, dtype=np.float32)

    def _from_points(self, q_points):
        return like_input(np.ascontiguousarray(q_points.T).reshape(self.num_labels, *self.spatial_shape), self._torch)

    def __repr__(self):
        terms = ", ".join(f"{t['type']}(d={t['dim']})" for t in self.pairwise_terms)
        return f"DenseCRF(num_labels={self.num_labels}, spatial_shape={self.spatial_shape}, terms=[{terms}])"


# The compiled mean field counts iterations in a C int. A long run stops at
# Ctrl-C (KeyboardInterrupt between iterations).
MAX_ITERATIONS = 2**31 - 1


def _check_iterations(iterations, name="iterations"):
    iterations = check_int(iterations, name, minimum=0)
    if iterations > MAX_ITERATIONS:
        raise ValueError(f"{name} must be at most {MAX_ITERATIONS}, got {iterations}")
    return iterations
