"""A device-agnostic permutohedral lattice in pure PyTorch ops.

Runs on any device torch runs on, in float32 or float64, and is differentiable
through autograd with respect to the filtered values (index_add / gather):
the fallback where the compiled extensions are unavailable and the oracle
for them. The construction follows the same steps as the C++ lattice
(csrc/cpu/lattice/); vertices are numbered by sorting their keys
(``torch.unique``) instead of hashing, so no hash table is needed on any device.
"""
from __future__ import annotations

import math

__all__ = ["TorchLattice"]


class TorchLattice:
    """Permutohedral lattice over (N, d) features; ``filter(values)`` approximates the Gaussian sum.

    Parameters
    ----------
    features : (N, d) torch.Tensor
        Already divided by the bandwidths; float32 or float64; any device. Not
        differentiated (lattice positions are piecewise constant in them).

    Examples
    --------
    >>> import torch
    >>> from segpost.lattice import TorchLattice
    >>> lattice = TorchLattice(torch.rand(100, 3, dtype=torch.float64) * 4)
    >>> values = torch.rand(100, 2, dtype=torch.float64, requires_grad=True)
    >>> out = lattice.filter(values, normalize=True)
    >>> out.shape, out.dtype
    (torch.Size([100, 2]), torch.float64)
    >>> out.sum().backward()          # differentiable in the values
    >>> values.grad.shape
    torch.Size([100, 2])
    """

    def __init__(self, features):
        import torch

        if not isinstance(features, torch.Tensor) or not features.is_floating_point() or features.ndim != 2:
            raise ValueError("features must be an (N, d) floating torch tensor")
        n, d = features.shape
        if n == 0 or not 1 <= d <= 64:
            raise ValueError(f"need N >= 1 points and 1 <= d <= 64 dimensions, got ({n}, {d})")
        if not bool(torch.isfinite(features).all()):
            raise ValueError("features must be finite")
        f = features.detach().double()
        device = f.device
        self.num_points, self.dim = n, d
        d1 = d + 1
        i = torch.arange(d, device=device, dtype=torch.float64)
        scale = math.sqrt(2.0 / 3.0) * d1 / torch.sqrt((i + 1) * (i + 2))
        # Move towards the origin by whole lattice periods (d+1)/scale: the same lattice, smaller keys.
        period = d1 / scale
        origin = torch.floor(f.min(dim=0).values / period) * period
        cf = (f - origin) * scale                                          # (N, d)
        suffix = torch.cat([torch.flip(torch.cumsum(torch.flip(cf, [1]), 1), [1]),
                            torch.zeros(n, 1, device=device, dtype=torch.float64)], 1)  # (N, d+1): sum_{k>=j} cf_k
        j = torch.arange(1, d1, device=device, dtype=torch.float64)
        elevated = torch.cat([suffix[:, :1], suffix[:, 1:] - j * cf], 1)  # (N, d+1)
        if not bool((elevated.abs() < 2.0**30).all()):
            raise ValueError("features span too large a range for the lattice's keys; use larger bandwidths")
        # Nearest multiple of d+1 (ties go down), as the C++ lattice.
        # A multiplication by 1 / (d+1), as csrc/simplex.h: a division rounds ties differently.
        inverse_d1 = 1.0 / d1
        v = elevated * inverse_d1
        lo = torch.floor(v)
        k = lo + ((v - lo) > 0.5).double()
        rem0 = k * d1
        total = k.sum(1).long()                                            # (N,)
        remainder = elevated - rem0
        # rank_i = #{j: rem_j > rem_i} + #{j < i: rem_j == rem_i}
        greater = remainder[:, None, :] > remainder[:, :, None]           # [n, i, j]: rem_j > rem_i
        equal_before = (remainder[:, None, :] == remainder[:, :, None]) & torch.tril(
            torch.ones(d1, d1, dtype=torch.bool, device=device), diagonal=-1)
        rank = (greater | equal_before).sum(2)                             # (N, d+1)
        s = total[:, None]
        up = (s > 0) & (rank >= d1 - s)
        down = (s < 0) & (rank < -s)
        rem0 = rem0 - d1 * up.double() + d1 * down.double()
        rank = rank + s - d1 * up.long() + d1 * down.long()
        delta = (elevated - rem0) * inverse_d1
        bary = torch.zeros(n, d + 2, device=device, dtype=torch.float64)
        bary.scatter_add_(1, d - rank, delta)
        bary.scatter_add_(1, d + 1 - rank, -delta)
        bary[:, 0] += 1 + bary[:, d + 1]
        self.weights = bary[:, :d1]                                        # (N, d+1)
        # Keys of the d+1 vertices (first d coordinates; the last is implied).
        r = torch.arange(d1, device=device)
        keys = rem0[:, None, :d].long() + r[None, :, None] - d1 * (rank[:, None, :d] > d - r[None, :, None]).long()
        # One int64 code per key (mixed radix over the keys' span), so that finding the distinct vertices is
        # a 1-D unique: torch.unique(keys, dim=0) sorts rows one by one on the CPU and took two thirds of
        # the build. The codes are linear in the key, so a neighbour's code is the vertex's plus a constant.
        flat_keys = keys.reshape(-1, d)
        lo_key = flat_keys.min(dim=0).values - d - 1
        span = flat_keys.max(dim=0).values - lo_key + d + 2
        if float(span.double().log2().sum()) > 62:
            raise ValueError("lattice keys too spread for the torch lattice's int64 codes; use the C++ lattice")
        radix = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long, device=device), span[:-1]]), 0)
        codes, inverse = torch.unique(((flat_keys - lo_key) * radix).sum(1), return_inverse=True)  # sorted
        self.num_vertices = codes.shape[0]
        self.corner_vertex = inverse.reshape(n, d1) + 1                    # shifted: 0 is the empty slot
        # Neighbours along each lattice axis, found by searching the sorted codes.
        neighbours = []
        for axis in range(d1):
            pair = []
            for sign in (-1, 1):
                shift = torch.full((d,), sign, dtype=torch.long, device=device)
                if axis < d:
                    shift[axis] = -sign * d
                ncode = codes + (shift * radix).sum()
                pos = torch.searchsorted(codes, ncode).clamp(max=len(codes) - 1)
                found = codes[pos] == ncode
                pair.append(torch.where(found, pos + 1, torch.zeros_like(pos)))
            neighbours.append(torch.stack(pair))
        self.neighbours = torch.stack(neighbours)                          # (d+1, 2, M), shifted
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))
        self._ones = None

    #: filter_rows is differentiable in the values through autograd (torch ops all the way).
    autograd = True

    def filter_rows(self, values, pre=None, post=None, *, transpose=False):
        """``post * K(pre * values)`` (``K^T`` with ``transpose``) of (N, C) rows: the lattice interface's
        filter (``segpost.lattice``), in the values' dtype, differentiable in them; (N,) scales or None."""
        rows = values if pre is None else pre.to(values.dtype)[:, None] * values
        out = self.filter(rows, adjoint=transpose)
        return out if post is None else post.to(values.dtype)[:, None] * out

    def filter(self, values, *, normalize=False, adjoint=False):
        """Filter (N,) or (N, C) values (any float dtype/device as the lattice's); differentiable in them."""
        import torch

        squeeze = values.ndim == 1
        v = values[:, None] if squeeze else values
        if v.ndim != 2 or v.shape[0] != self.num_points:
            raise ValueError(f"values must be ({self.num_points},) or ({self.num_points}, C), got {tuple(values.shape)}")
        w = self.weights.to(v.dtype)
        c = v.shape[1]
        d1 = self.dim + 1
        # Splat: each point adds w_r * v to its d+1 vertices.
        contributions = (w[:, :, None] * v[:, None, :]).reshape(-1, c)
        grid = torch.zeros(self.num_vertices + 1, c, dtype=v.dtype, device=v.device)
        grid = grid.index_add(0, self.corner_vertex.reshape(-1), contributions)
        axes = range(self.dim, -1, -1) if adjoint else range(d1)
        for axis in axes:
            lo, hi = self.neighbours[axis]
            blurred = grid[1:] + 0.5 * (grid[lo] + grid[hi])
            grid = torch.cat([grid[:1], blurred], 0)
        out = self.alpha * (w[:, :, None] * grid[self.corner_vertex]).sum(1)
        if normalize:
            if adjoint:
                raise ValueError("adjoint=True is defined for the unnormalised filter")
            out = out / self.filtered_ones().to(out.dtype)[:, None]
        return out[:, 0] if squeeze else out

    def filtered_ones(self):
        """(N,) the filter applied to a constant 1 (strictly positive), cached."""
        import torch

        if self._ones is None:
            ones = torch.ones(self.num_points, 1, dtype=self.weights.dtype, device=self.weights.device)
            self._ones = self.filter(ones)[:, 0].detach()
        return self._ones
