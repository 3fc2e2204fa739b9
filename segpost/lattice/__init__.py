"""Permutohedral lattices (Adams et al. 2010): one interface, three implementations.

- :class:`PermutohedralLattice` (``cpu.py``): the C++ lattice, what every CPU
  path runs on; its :meth:`~PermutohedralLattice.filter` is the checked entry
  point for users.
- :class:`TorchLattice` (``torch_ops.py``): pure torch ops on any device,
  differentiable through autograd; the GPU fallback and the reference the
  compiled lattices are tested against.
- :class:`CudaLattice` (``cuda.py``): the CUDA extension ``segpost._C_cuda``.

``grid_gaussian.py`` has the same interface for the smoothness kernel of a
grid computed exactly (one convolution per axis), which volumes use.

The interface the CRF (``segpost.crf``, ``segpost.nn``) uses, unchecked (its
callers have validated their inputs):

``num_points``, ``dim``, ``num_vertices``
    The point count N, the feature dimension d and the vertices touched.
``filter_rows(values, pre=None, post=None, *, transpose=False)``
    ``post * K(pre * values)`` of (N, C) rows (``K^T``, the exact adjoint, with
    ``transpose``), with (N,) scales or None.
``filtered_ones()``
    ``K 1``, (N,), from which the CRF computes its normalisation scales.
``autograd``
    Whether ``filter_rows`` on tensors carries autograd itself (the torch
    lattice); the compiled ones are differentiated through
    :func:`segpost.lattice.autograd.lattice_filter`.

:func:`lattice_for` picks the implementation for a tensor's device.
"""
from __future__ import annotations

from .cpu import MAX_LATTICE_DIM, PermutohedralLattice, lattice_bytes

# The public lattices; CudaLattice, lattice_for and lattice_bytes serve segpost's own CRF code.
__all__ = ["MAX_LATTICE_DIM", "PermutohedralLattice", "TorchLattice"]


def __getattr__(name):
    # The torch-based lattices import on first use: ``import segpost`` does not import torch.
    if name == "TorchLattice":
        from .torch_ops import TorchLattice

        return TorchLattice
    if name == "CudaLattice":
        from .cuda import CudaLattice

        return CudaLattice
    raise AttributeError(f"module 'segpost.lattice' has no attribute {name!r}")


def lattice_for(features, *, compiled=True, images=1):
    """The lattice for (N, d) tensor features on their device, or None for a batch only CUDA builds as one.

    ``compiled``: the CUDA lattice for CUDA features (when ``segpost._C_cuda``
    loads and d <= 16), the C++ lattice for CPU features; otherwise, and as
    the GPU fallback, :class:`TorchLattice`. ``images`` > 1: the features are
    that many images' rows, point-major each; only the CUDA lattice builds
    them as one lattice (images share no vertex), else None: the caller builds
    one lattice per image.
    """
    if compiled and features.is_cuda:
        from .cuda import CudaLattice, cuda_extension

        extension = cuda_extension()
        if extension is not None and features.shape[1] <= 16:
            return CudaLattice(features.detach(), extension, images=images)
    if images > 1:
        return None
    if compiled and features.device.type == "cpu":
        return PermutohedralLattice(features.detach().numpy())
    from .torch_ops import TorchLattice

    return TorchLattice(features)
