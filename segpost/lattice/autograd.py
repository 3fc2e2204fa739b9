"""Autograd through the compiled lattices: the filter's gradient is its exact adjoint."""
from __future__ import annotations

__all__ = ["lattice_filter"]


def _filter_function():
    import torch

    class LatticeFilter(torch.autograd.Function):
        """``post * K(pre * v)`` on a compiled lattice, whose gradient is the exact adjoint
        ``pre * K^T(post * g)``: the lattice's blur axes in reverse order, the scales swapped. The compiled
        lattices compute in float32; the result has the values' dtype."""

        @staticmethod
        def forward(ctx, values, lattice, pre, post):
            ctx.operator = (lattice, pre, post)
            return lattice.filter_rows(values.detach(), pre, post).to(values.dtype)

        @staticmethod
        def backward(ctx, grad):
            lattice, pre, post = ctx.operator
            return lattice.filter_rows(grad, post, pre, transpose=True).to(grad.dtype), None, None, None

    return LatticeFilter


_LATTICE_FILTER = None


def lattice_filter(lattice, pre=None, post=None):
    """``q -> post * K(pre * q)`` on (N, C) tensor rows, differentiable in them, on any lattice of the interface
    (``segpost.lattice``): through autograd on the torch lattice, through the exact adjoint on the compiled
    ones. ``pre``/``post``: (N,) scales or None, of the kind ``filtered_ones`` gives the lattice."""
    global _LATTICE_FILTER
    if lattice.autograd:
        return lambda q: lattice.filter_rows(q, pre, post)
    if _LATTICE_FILTER is None:  # defined on first use: importing segpost does not import torch
        _LATTICE_FILTER = _filter_function()
    return lambda q: _LATTICE_FILTER.apply(q, lattice, pre, post)
