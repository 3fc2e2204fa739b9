"""The CUDA lattice (``csrc/cuda/``): loading the extension (prebuilt, or compiled just in time) and
:class:`CudaLattice`, its implementation of the lattice interface (``segpost.lattice``)."""
from __future__ import annotations

import os
import warnings

_EXTENSION = None
_TRIED = False


def cuda_extension():
    """segpost._C_cuda if available (built with SEGPOST_CUDA=1, or compiled just in time), else None."""
    global _EXTENSION, _TRIED
    if _TRIED:
        return _EXTENSION
    _TRIED = True
    try:
        from .. import _C_cuda  # type: ignore[attr-defined]

        _EXTENSION = _C_cuda
        return _EXTENSION
    except ImportError:
        pass
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, load

        if not torch.cuda.is_available() or CUDA_HOME is None:
            return None
        root = os.path.join(os.path.dirname(__file__), "..", "..", "csrc", "cuda")
        sources = [os.path.join(root, "permutohedral_cuda.cu"), os.path.join(root, "bindings_cuda.cpp")]
        if not all(os.path.exists(s) for s in sources):
            return None
        warnings.warn("segpost: compiling the CUDA lattice just in time (once; about a minute)", RuntimeWarning,
                      stacklevel=2)
        _EXTENSION = load("segpost_C_cuda", sources, extra_cuda_cflags=["-O3"], verbose=False)
    except Exception as exc:  # no nvcc, no headers, a compiler error: fall back, loudly
        warnings.warn(f"segpost: the CUDA lattice is unavailable ({exc}); using the pure-torch lattice on the GPU "
                      f"(much slower). Build it with a CUDA-enabled torch and nvcc: SEGPOST_CUDA=1 pip install "
                      f"--no-build-isolation segpost (see docs/developers.md)", RuntimeWarning, stacklevel=2)
        _EXTENSION = None
    return _EXTENSION


class CudaLattice:
    """The GPU lattice: the lattice interface (``segpost.lattice``) on CUDA tensors; not differentiable
    (the CRF wraps :meth:`filter_rows` in ``segpost.lattice.autograd``'s exact-adjoint function)."""

    autograd = False

    def __init__(self, features, extension, *, images=1):
        """``images`` > 1: the rows are a batch of that many images, point-major each, built as one lattice
        whose images share no vertex (the image's index is one more key component)."""
        self._ext = extension
        self.num_points, self.dim = features.shape
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
