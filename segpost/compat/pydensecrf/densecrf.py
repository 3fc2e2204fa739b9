"""``pydensecrf.densecrf`` on segpost: DenseCRF, DenseCRF2D and the kernel constants.

Conventions kept from pydensecrf: unary energies are float32, C-contiguous,
(nlabels, nvar); pairwise features float32, C-contiguous, (D, nvar);
``DenseCRF2D(width, height, nlabels)`` takes the width first; images are
(H, W, 3) uint8 C-contiguous; a scalar compat is Potts, a 1-D float32 array
diagonal and a 2-D float32 array a full matrix (symmetrised); Q is
(nlabels, nvar).
"""
from __future__ import annotations

import numbers

import numpy as np

from ..._validation import MAX_CRF_SCORE, MIN_BANDWIDTH, check_finite, check_int
from ...crf.model import DenseCRF as _DenseCRF
from ...crf.model import _check_iterations

__all__ = [
    "CONST_KERNEL", "DIAG_KERNEL", "FULL_KERNEL",
    "NO_NORMALIZATION", "NORMALIZE_BEFORE", "NORMALIZE_AFTER", "NORMALIZE_SYMMETRIC",
    "DenseCRF", "DenseCRF2D",
]

CONST_KERNEL, DIAG_KERNEL, FULL_KERNEL = 0, 1, 2
NO_NORMALIZATION, NORMALIZE_BEFORE, NORMALIZE_AFTER, NORMALIZE_SYMMETRIC = 0, 1, 2, 3

_KERNELS = {CONST_KERNEL: "const", DIAG_KERNEL: "diag", FULL_KERNEL: "full"}
_NORMALIZATIONS = {NO_NORMALIZATION: "none", NORMALIZE_BEFORE: "before", NORMALIZE_AFTER: "after",
                   NORMALIZE_SYMMETRIC: "symmetric"}


def _strict_array(x, name, dtype, ndim, shape=None):
    """pydensecrf's typed-memoryview checks, as ValueErrors that say how to fix the call."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array of {np.dtype(dtype).name}, got {type(x).__name__}")
    if x.dtype != dtype:
        raise ValueError(f"{name} must have dtype {np.dtype(dtype).name}, got {x.dtype}; "
                         f"use {name}.astype(np.{np.dtype(dtype).name})")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous; use np.ascontiguousarray({name})")
    if shape is not None and any(s is not None and s != t for s, t in zip(shape, x.shape)):
        expected = tuple("*" if s is None else s for s in shape)
        raise ValueError(f"{name} must have shape {expected}, got {x.shape}")
    return x


def _compat(compat, nlabels):
    if isinstance(compat, numbers.Number) and not isinstance(compat, bool):
        return float(compat)
    arr = np.asarray(compat) if not isinstance(compat, np.ndarray) else compat
    if arr.ndim == 1:
        return _strict_array(arr, "compat", np.float32, 1, (nlabels,))
    if arr.ndim == 2:
        return _strict_array(arr, "compat", np.float32, 2, (nlabels, nlabels))
    raise ValueError("LabelCompatibility of dimension >2 not meaningful.")


def _choice(value, table, name):
    try:
        return table[int(value)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{name} must be one of {sorted(table)}, got {value!r}") from None


class DenseCRF:
    """A dense CRF over ``nvar`` variables and ``nlabels`` labels (pydensecrf's API).

    The drop-in for pydensecrf, names and conventions included. segpost's own
    model is :class:`segpost.DenseCRF`; the training layer is
    :class:`segpost.nn.DenseCRF`.

    Examples
    --------
    >>> import numpy as np
    >>> import segpost.compat.pydensecrf.densecrf as dcrf
    >>> d = dcrf.DenseCRF(100, 3)
    >>> d.setUnaryEnergy(np.random.default_rng(0).random((3, 100)).astype(np.float32))
    >>> d.addPairwiseEnergy(np.random.default_rng(1).random((2, 100)).astype(np.float32), compat=3)
    >>> Q = d.inference(5)
    >>> np.array(Q).shape
    (3, 100)
    """

    def __init__(self, nvar, nlabels):
        self._init_crf(check_int(nvar, "nvar"), nlabels, None)

    def _init_crf(self, nvar, nlabels, spatial_shape):
        self._nvar, self._nlabel = nvar, check_int(nlabels, "nlabels")
        # No unary until setUnaryEnergy: zero energies, as pydensecrf. An
        # image's (H, W) grid lets the mean field sweep it tile by tile.
        self._crf = _DenseCRF._from_point_major(np.zeros((self._nvar, self._nlabel), np.float32),
                                                spatial_shape or (self._nvar,))

    def setUnaryEnergy(self, u, f=None):
        """Set the unary energy U, float32 (nlabels, nvar): negative log-probabilities."""
        if f is not None:
            raise NotImplementedError("feature-based (learned logistic) unaries are not supported by segpost")
        _strict_array(u, "unary", np.float32, 2, (self._nlabel, self._nvar))
        check_finite(u, "unary", bound=MAX_CRF_SCORE)
        self._crf._replace_unary(u.T)

    def addPairwiseEnergy(self, f, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC):
        """Add a Gaussian pairwise term on features f, float32 (D, nvar), already divided by bandwidths."""
        _strict_array(f, "features", np.float32, 2, (None, self._nvar))
        self._crf.add_pairwise(f.T, _compat(compat, self._nlabel), kernel=_choice(kernel, _KERNELS, "kernel"),
                               normalization=_choice(normalization, _NORMALIZATIONS, "normalization"))

    def inference(self, niter):
        """Q after ``niter`` mean-field iterations, float32 (nlabels, nvar)."""
        q, _ = self._crf._model.infer(self._crf._unary, _iterations(niter))
        return np.ascontiguousarray(q.T)

    def startInference(self):
        """(Q, tmp1, tmp2) to pass to stepInference; Q = softmax(-U)."""
        q, _ = self._crf._model.infer(self._crf._unary, 0)
        return np.ascontiguousarray(q.T), np.zeros_like(q.T), np.zeros_like(q.T)

    def stepInference(self, Q, tmp1, tmp2):
        """One mean-field iteration, updating Q in place."""
        _strict_array(Q, "Q", np.float32, 2, (self._nlabel, self._nvar))
        q, _ = self._crf._model.infer(self._crf._unary, 1, np.ascontiguousarray(Q.T))
        Q[...] = q.T

    def klDivergence(self, Q):
        """KL divergence between Q and the CRF's distribution, up to the constant log Z."""
        _strict_array(Q, "Q", np.float32, 2, (self._nlabel, self._nvar))
        return self._crf.kl_divergence(Q)


class DenseCRF2D(DenseCRF):
    """A dense CRF over the pixels of a W x H image (width first, as in pydensecrf)."""

    def __init__(self, w, h, nlabels):
        self._w, self._h = check_int(w, "w"), check_int(h, "h")
        self._init_crf(self._w * self._h, nlabels, (self._h, self._w))

    def addPairwiseGaussian(self, sxy, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC):
        """Smoothness term on (x / sx, y / sy); sxy is a number or (sx, sy)."""
        sx, sy = _pair(sxy, "sxy")
        self._crf.add_gaussian((sy, sx), compat=_compat(compat, self._nlabel),
                               kernel=_choice(kernel, _KERNELS, "kernel"),
                               normalization=_choice(normalization, _NORMALIZATIONS, "normalization"))

    def addPairwiseBilateral(self, sxy, srgb, rgbim, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC):
        """Appearance term on (x / sx, y / sy, r / sr, g / sg, b / sb); rgbim is (H, W, 3) uint8."""
        sx, sy = _pair(sxy, "sxy")
        srgb = (srgb,) * 3 if isinstance(srgb, numbers.Number) else tuple(srgb)
        if len(srgb) != 3:
            raise ValueError(f"srgb must be a number or 3 numbers, got {srgb!r}")
        if not isinstance(rgbim, np.ndarray) or rgbim.shape[:2] != (self._h, self._w):
            raise ValueError("Bad shape for pairwise bilateral. Need (H,W,3) "
                             f"= ({self._h}, {self._w}, 3), got {getattr(rgbim, 'shape', None)}")
        _strict_array(rgbim, "rgbim", np.uint8, 3, (self._h, self._w, 3))
        self._crf.add_bilateral(rgbim, (sy, sx), srgb, compat=_compat(compat, self._nlabel),
                                kernel=_choice(kernel, _KERNELS, "kernel"),
                                normalization=_choice(normalization, _NORMALIZATIONS, "normalization"))


def _pair(value, name):
    """(x, y) bandwidths, checked here so that a message quotes them in the caller's order (the CRF takes (y, x))."""
    try:
        pair = (value, value) if isinstance(value, numbers.Number) else tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a number or (x, y), got {type(value).__name__}") from None
    if len(pair) != 2:
        raise ValueError(f"{name} must be a number or (x, y), got {value!r}")
    for v in pair:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v) or v < MIN_BANDWIDTH:
            raise ValueError(f"{name} must be positive bandwidths of at least {MIN_BANDWIDTH:g}, got {value!r}")
    return float(pair[0]), float(pair[1])


def _iterations(n):
    return _check_iterations(n, "niter")
