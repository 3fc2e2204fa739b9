"""The dense CRF's mean field in torch ops around a lattice: crf_refine on a device, and nn.DenseCRF.

One mean-field loop (:func:`mean_field`) serves ``crf_refine`` on the GPU
and the training layer on every device; the kernels are normalised lattice
filters ``post * K(pre * q)`` (symmetric by default: ``s * K(s * q)`` with
``s = (K 1)^-1/2``, as the CPU path). The lattice is whichever
``segpost.lattice.lattice_for`` picks for the features' device. A leaf of
the CRF package: it imports the lattices and nothing of ``segpost.crf``.
"""
from __future__ import annotations

import numpy as np

from ..lattice import lattice_for
from ..lattice.autograd import lattice_filter

__all__ = ["NORMALIZATIONS", "mean_field", "messages", "grid_features", "kernel_filters", "normalization_scales",
           "per_image"]

NORMALIZATIONS = ("none", "before", "after", "symmetric")


def normalization_scales(ones, normalization):
    """(pre, post) per-point scales of a kernel normalisation from ``K 1``: the one home of this arithmetic.

    Computed in float64 and returned in the filtered ones' dtype (float32
    for the compiled lattices); ``ones`` is a numpy array (the C++ lattice)
    or a tensor on its device. "none" is the raw lattice sum, as pydensecrf
    (which computes a mean norm but never applies it). numpy scales are
    read-only: they may be shared through the grid cache, and the compiled
    mean field reads them in place.
    """
    if normalization == "none":
        return None, None
    if isinstance(ones, np.ndarray):
        scale = ones.astype(np.float64)
        scale += 1e-20
        if normalization == "symmetric":
            np.sqrt(scale, out=scale)
        np.divide(1.0, scale, out=scale)
        scale = scale.astype(ones.dtype)
        scale.flags.writeable = False
    else:
        scale = ones.double() + 1e-20
        scale = (1.0 / (scale.sqrt() if normalization == "symmetric" else scale)).to(ones.dtype).contiguous()
    return {"symmetric": (scale, scale), "before": (scale, None), "after": (None, scale)}[normalization]


def messages(q, filters, weights, compatibility):
    """``sum_m weights[m] * (filters[m](q) @ C_m^T)``: what one mean-field update adds to the scores.

    ``compatibility``: (M, C, C), a sequence of M (C, C) matrices whose
    None entries are the identity (Potts: no matrix product), or None.
    """
    total = 0
    for m, kernel in enumerate(filters):
        filtered = kernel(q)
        matrix = None if compatibility is None else compatibility[m]
        if matrix is not None:
            filtered = filtered @ matrix.to(filtered.dtype).T
        term = weights[m] * filtered
        # The first term starts the sum: `0 + term` would copy it.
        total = term if m == 0 else total + term
    return total


def mean_field(scores, filters, weights, compatibility, iterations):
    """``iterations`` mean-field updates of (N, C) scores (negative unary energies): the refined scores.

    ``Q = softmax(scores)``, then ``out = scores + sum_m weights[m] * (filters[m](Q) @ C_m^T)`` and
    ``Q = softmax(out)``; ``compatibility`` (M, C, C), M matrices or None each (:func:`messages`), or None
    for Potts (the identity). Differentiable in
    the scores, weights and compatibilities when the filters are.
    """
    import torch

    out = scores
    for _ in range(iterations):
        out = scores + messages(torch.softmax(out, dim=1), filters, weights, compatibility)
    return out


def grid_features(image, pos_xy, bi_xy, bi_rgb, *, spacing=None):
    """The smoothness (N, d) and appearance (N, d + C) features of a (C, H, W) image or (C, D, H, W) volume.

    Exactly as the CPU path builds them (``DenseCRF.add_gaussian`` /
    ``add_bilateral``): float32 positions, last axis first (x, y[, z]),
    ``arange * float32(spacing / sigma)``, and intensities divided by a
    float32 bandwidth. ``spacing``: per spatial axis, default 1.
    """
    import torch

    c, *spatial = image.shape
    device = image.device
    spacing = np.ones(len(spatial)) if spacing is None else np.asarray(spacing, np.float64)

    def positions(sigma):
        steps = (spacing / sigma).astype(np.float32)
        columns = []
        for axis in reversed(range(len(spatial))):
            shape = [1] * len(spatial)
            shape[axis] = spatial[axis]
            coordinate = torch.arange(spatial[axis], device=device, dtype=torch.float32) * float(steps[axis])
            columns.append(coordinate.reshape(shape).expand(spatial).reshape(-1))
        return torch.stack(columns, 1)

    colours = image.reshape(c, -1).T.to(torch.float32) / torch.tensor(np.float32(bi_rgb), device=device)
    return positions(pos_xy), torch.cat([positions(bi_xy), colours], 1)


def per_image(filters, q):
    """A batch's rows through each image's own filter."""
    import torch

    return torch.cat([kernel(rows) for kernel, rows in zip(filters, q.chunk(len(filters)))])


def normalised_filter(lattice, normalization="symmetric"):
    """``q -> post * K(pre * q)`` on a lattice with a normalisation's scales, differentiable in q."""
    return lattice_filter(lattice, *normalization_scales(lattice.filtered_ones(), normalization))


def kernel_filters(features, *, compiled=True, images=1, normalization="symmetric"):
    """Normalised filters ``q -> post * K(pre * q)`` of each feature set, each lattice built once.

    ``compiled``: the compiled lattice of the features' device (CUDA when
    built, C++ for CPU features), differentiated through its exact adjoint;
    otherwise the torch lattice, through autograd (``segpost.lattice.lattice_for``).
    ``images`` > 1: each feature set is a batch of that many images' rows,
    point-major each; the CUDA build makes it one lattice (images share no
    vertex), the others one lattice per image.
    """
    filters = []
    for feature_set in features:
        lattice = lattice_for(feature_set, compiled=compiled, images=images)
        if lattice is None:
            each = kernel_filters(feature_set.chunk(images), compiled=compiled, normalization=normalization)
            filters.append(lambda q, each=each: per_image(each, q))
            continue
        filters.append(normalised_filter(lattice, normalization))
    return filters
