"""The CUDA lattice (``csrc/cuda/``): loading the extension (prebuilt, or compiled just in time) and
:class:`CudaLattice`, its implementation of the lattice interface (``segpost.lattice``)."""
from __future__ import annotations

import os
import warnings

_EXTENSION = None
_TRIED = False
# Where the extension came from, or why it did not: kept for cuda_extension_status() (benchmarks/gpu_check.py
# prints it). A failed import of a built _C_cuda (a missing libcudart, an ABI mismatch) must not vanish into a
# silent fallback to the ~100x slower torch lattice.
_STATUS = {"loaded": False, "how": None, "origin": None, "import_error": None, "error": None}

_BUILD_HINT = ("Build it with a CUDA-enabled torch and nvcc: SEGPOST_CUDA=1 pip install --no-build-isolation "
               "segpost (see docs/developers.md)")


def _describe(exc):
    return f"{type(exc).__name__}: {exc}"


def cuda_extension():
    """segpost._C_cuda if available (built with SEGPOST_CUDA=1, or compiled just in time), else None.

    Tried once per process. Every fallback warns (RuntimeWarning) with the
    reason, including the text of the failed ``import segpost._C_cuda``;
    :func:`cuda_extension_status` keeps it.
    """
    global _EXTENSION, _TRIED
    if _TRIED:
        return _EXTENSION
    _TRIED = True
    try:
        from .. import _C_cuda  # type: ignore[attr-defined]
    except ImportError as exc:
        _STATUS["import_error"] = _describe(exc)
    else:
        _EXTENSION = _C_cuda
        _STATUS.update(loaded=True, how="prebuilt", origin=getattr(_C_cuda, "__file__", None))
        return _EXTENSION
    because = f"segpost._C_cuda did not import ({_STATUS['import_error']})"
    try:
        import torch
        from torch.utils import cpp_extension

        root = os.path.join(os.path.dirname(__file__), "..", "..", "csrc", "cuda")
        sources = [os.path.join(root, "permutohedral_cuda.cu"), os.path.join(root, "bindings_cuda.cpp")]
        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device")
        if cpp_extension.CUDA_HOME is None:
            raise RuntimeError("no CUDA toolkit (nvcc) to compile it just in time")
        if not all(os.path.exists(s) for s in sources):
            raise RuntimeError("its sources (csrc/cuda/) are not here to compile it just in time")
        warnings.warn(f"segpost: {because}; compiling the CUDA lattice just in time (once; about a minute)",
                      RuntimeWarning, stacklevel=2)
        _EXTENSION = cpp_extension.load("segpost_C_cuda", sources, extra_cuda_cflags=["-O3"], verbose=False)
        _STATUS.update(loaded=True, how="just in time", origin=getattr(_EXTENSION, "__file__", None))
    except Exception as exc:  # no GPU, no nvcc, no sources, a compiler error: fall back, loudly
        _STATUS["error"] = _describe(exc)
        warnings.warn(f"segpost: the CUDA lattice is unavailable: {because}, and {_STATUS['error']}; using the "
                      f"pure-torch lattice on the GPU (much slower). {_BUILD_HINT}", RuntimeWarning, stacklevel=2)
        _EXTENSION = None
    return _EXTENSION


def cuda_extension_status():
    """What :func:`cuda_extension` found, as a dict (loads the extension first if not yet tried).

    ``loaded`` (bool); ``how``: "prebuilt", "just in time" or None;
    ``origin``: the loaded module's file; ``import_error``: the text of the
    failed ``import segpost._C_cuda`` (None when it imported); ``error``: why
    the just-in-time build did not happen or failed.
    """
    cuda_extension()
    return dict(_STATUS)


class CudaLattice:
    """The GPU lattice: the lattice interface (``segpost.lattice``) on CUDA tensors; not differentiable
    (the CRF wraps :meth:`filter_rows` in ``segpost.lattice.autograd``'s exact-adjoint function)."""

    autograd = False

    def __init__(self, features, extension, *, images=1):
        """``images`` > 1: the rows are a batch of that many images, point-major each, built as one lattice
        whose images share no vertex (the image's index is one more key component)."""
        self._ext = extension
        if features.ndim != 2:
            raise ValueError(f"features must be (N, d), got shape {tuple(features.shape)}")
        self.num_points, self.dim = features.shape
        if self.num_points == 0 or self.dim == 0:
            raise ValueError(f"features must have at least one point and one dimension, got shape "
                             f"{tuple(features.shape)}")
        if images < 1 or self.num_points % images:
            raise ValueError(f"{images} images do not split {self.num_points} points evenly")
        # The extension's tensors, passed back whole to each filter: vertex ids and weights of each
        # point's corners, the blur neighbours, and the splat's chunked CSR (bindings_cuda.cpp).
        self._parts = tuple(extension.build(features.detach(), self.num_points // images if images > 1 else 0))
        self.corner_vertex, self.weights, self.neighbours = self._parts[:3]
        self.num_vertices = self.neighbours.shape[1]
        self._ones = None

    def filter(self, values, *, normalize=False, adjoint=False):
        if normalize and adjoint:
            raise ValueError("adjoint=True is defined for the unnormalised filter; use normalize=False")
        squeeze = values.ndim == 1
        v = values[:, None] if squeeze else values
        out = self._ext.filter(*self._parts, v.float(), None, None, bool(adjoint))
        if normalize:
            out = out / self.filtered_ones()[:, None]
        out = out.to(values.dtype)
        return out[:, 0] if squeeze else out

    def filter_rows(self, values, pre=None, post=None, *, transpose=False):
        """``post * K(pre * values)`` (``K^T`` with ``transpose``) of (N, C) rows, float32 out; (N,) float32
        scales or None (as ``normalization_scales`` gives them for :meth:`filtered_ones`)."""
        return self._ext.filter(*self._parts, values.float(), pre, post, bool(transpose))

    def filtered_ones(self):
        """``K 1``: the (N,) float32 filter of a constant one."""
        import torch

        if self._ones is None:
            ones = torch.ones(self.num_points, 1, device=self.weights.device)
            self._ones = self._ext.filter(*self._parts, ones, None, None, False)[:, 0]
        return self._ones
