"""The dense CRF on a torch device: crf_refine's device path and DenseCRF on a unary tensor there.

Both run :mod:`segpost.crf.mean_field` on the lattice
``segpost.lattice.lattice_for`` picks (the CUDA extension when it is built,
else the torch lattice; the C++ lattice for CPU tensors, which is how the
tests hold this path equal to the CPU path without a GPU), and a volume's
smoothness kernel, where ``add_gaussian``'s method makes it the exact
separable Gaussian, on ``TorchGridGaussian`` (torch convolutions, any device).
"""
from __future__ import annotations

import numpy as np

from .._validation import MAX_CRF_SCORE, on_device
from ..lattice import lattice_for
from ..lattice.grid_gaussian import TorchGridGaussian, smoothness_method
from .inputs import PROBABILITY_CLIP, check_device_memory
from .mean_field import grid_features, kernel_filters, mean_field, messages, normalised_filter
from .model import _DIAGONAL, _POTTS, DenseCRF, _check_iterations

__all__ = ["refine_on_device", "DeviceDenseCRF"]


def refine_on_device(inputs, params, iterations, align_corners, return_probs, *, compiled=True):
    """crf_refine in torch ops on ``inputs.device`` (:class:`segpost.crf.inputs.RefineInputs`, checked):
    ``(labels, probs or None)`` as device tensors.

    ``inputs`` may also be a list, a batch of images of one shape and
    class count: one mean field over all their rows, on one lattice per
    kernel for the whole batch where the CUDA extension builds it (images
    share no vertex: each is refined as alone), and a list of results.
    ``compiled=False`` runs the torch lattice where the compiled one would
    run (the tests compare the two on the CPU).
    """
    import torch
    import torch.nn.functional as F

    batch = inputs if isinstance(inputs, list) else [inputs]
    spatial, num_classes = batch[0].spatial_shape, batch[0].scores.shape[0]
    rows, smooth, appearance = [], [], []
    for item in batch:
        scores = item.scores
        if tuple(scores.shape[1:]) != spatial:
            mode = "bilinear" if len(spatial) == 2 else "trilinear"
            scores = F.interpolate(scores[None], size=spatial, mode=mode, align_corners=bool(align_corners))[0]
        item_rows = scores.reshape(num_classes, -1).T
        # Point-major in memory: a transposed view would be copied by every iteration's softmax.
        rows.append((item_rows.clamp(PROBABILITY_CLIP, 1.0).log() if item.probabilities else item_rows).contiguous())
        features = grid_features(item.colours.movedim(-1, 0), params.pos_xy, params.bi_xy, params.bi_rgb,
                                 spacing=item.spacing)
        smooth.append(features[0])
        appearance.append(features[1])
    # The smoothness kernel as the CPU path filters it (DenseCRF.add_gaussian's method "auto"): where that is
    # the separable Gaussian, no lattice is built for it.
    spacing = np.ones(len(spatial)) if batch[0].spacing is None else np.asarray(batch[0].spacing, np.float64)
    steps = spacing / np.asarray(params.pos_xy, np.float64)
    separable = smoothness_method("auto", spatial, steps) == "separable"
    weights, filters = [], []
    if params.pos_weight > 0:
        weights.append(params.pos_weight)
        filters += ([normalised_filter(TorchGridGaussian(spatial, steps, device=rows[0].device, images=len(batch)))]
                    if separable else kernel_filters([torch.cat(smooth)], compiled=compiled, images=len(batch)))
    if params.bi_weight > 0:
        weights.append(params.bi_weight)
        filters += kernel_filters([torch.cat(appearance)], compiled=compiled, images=len(batch))
    with torch.no_grad():
        out = mean_field(torch.cat(rows), filters, weights, None, iterations)
    results = []
    for item_out in out.chunk(len(batch)):
        labels = item_out.argmax(1).reshape(spatial)
        probs = torch.softmax(item_out, dim=1).T.reshape(num_classes, *spatial) if return_probs else None
        results.append((labels, probs))
    return results if isinstance(inputs, list) else results[0]


class DeviceDenseCRF(DenseCRF, on_device=True):
    """:class:`segpost.DenseCRF` on the unary tensor's device (``DenseCRF(cuda_unary)`` returns one).

    The same terms and results as the CPU class: the features are built
    by its code (on the host, as it builds them), then the lattices, the
    normalisation and the mean field run on the device (the CUDA lattice,
    else the torch lattice; a volume's separable smoothness kernel in torch
    convolutions) and Q and the labels are device tensors.
    ``prune`` is accepted and has nothing to prune (a CPU optimisation).
    """

    def __init__(self, unary):
        import torch

        if not unary.is_floating_point():
            raise TypeError(f"unary must be floating-point, got dtype {unary.dtype}")
        if unary.ndim < 2 or 0 in unary.shape:
            raise ValueError(f"unary must be a non-empty (L, N) or (L, *spatial) tensor, got shape "
                             f"{tuple(unary.shape)}")
        unary = unary.detach().float()
        if not bool(torch.isfinite(unary).all()) or float(unary.abs().max()) > MAX_CRF_SCORE:
            raise ValueError(f"unary must be finite and at most {MAX_CRF_SCORE:.3g} in magnitude")
        self.device = unary.device
        self._torch = True
        self.num_labels = int(unary.shape[0])
        self.spatial_shape = tuple(int(s) for s in unary.shape[1:])
        self.num_points = int(np.prod(self.spatial_shape))
        self._row_length = 0
        check_device_memory(self.num_points, self.num_labels, [], self.device)
        self._scores = -unary.reshape(self.num_labels, -1).T.contiguous()  # (N, L) negative energies
        self._filters, self._weights, self._compat = [], [], []
        self._feature_dims, self.pairwise_terms, self._term_arguments = [], [], []

    def add_pairwise(self, features, compat=1.0, **options):
        # Features already on the device are validated there and stay there.
        if on_device(features):
            if features.ndim != 2 or features.shape[0] != self.num_points or not features.is_floating_point():
                raise ValueError(f"features must be a floating ({self.num_points}, D) tensor, got "
                                 f"{features.dtype} {tuple(features.shape)}")
            features = features.detach().cpu()
        return super().add_pairwise(features, compat, **options)

    def add_bilateral(self, image, *args, **options):
        return super().add_bilateral(image.detach().cpu() if on_device(image) else image, *args, **options)

    def _check_memory(self, dim):
        check_device_memory(self.num_points, self.num_labels, self._feature_dims + [dim], self.device)

    def _add_grid_term(self, sigma, spacing, kind, potts, compat_arr, kernel, normalization, method="auto"):
        # No grid cache on the device: the positions are built and moved like any features.
        steps = spacing / sigma
        if smoothness_method(method, self.spatial_shape, steps) == "separable":
            gaussian = TorchGridGaussian(self.spatial_shape, steps, device=self.device)
            self._add_filter(gaussian, len(self.spatial_shape), kind, potts, compat_arr, kernel, normalization,
                             "gaussian")
            return
        self._add_lattice_term(self._grid_positions(sigma, spacing), kind, potts, compat_arr, kernel, normalization,
                               "gaussian")

    def _add_lattice_term(self, features, kind, potts, compat_arr, kernel, normalization, label):
        import torch

        features = torch.tensor(np.asarray(features, np.float32), device=self.device)
        self._add_filter(lattice_for(features), features.shape[1], kind, potts, compat_arr, kernel, normalization,
                         label)

    def _add_filter(self, lattice, dim, kind, potts, compat_arr, kernel, normalization, label):
        """A term filtering on ``lattice`` (any of the lattice interface, the grid Gaussian's included)."""
        import torch

        self._filters.append(normalised_filter(lattice, normalization))
        # Q <- softmax(-U - sum_m compat_m(K_m Q)): Potts w is -w x, a diagonal v * x, a matrix M x.
        if kind == _POTTS:
            self._weights.append(potts)
            self._compat.append(None)  # the identity: no matrix product per iteration
        else:
            matrix = torch.from_numpy(compat_arr).to(self.device)
            self._weights.append(-1.0)
            self._compat.append(torch.diag(matrix) if kind == _DIAGONAL else matrix)
        self._record_term(label, dim, kernel, normalization, kind, potts, compat_arr, lattice.num_vertices,
                          getattr(lattice, "method", "lattice"))

    @property
    def _compatibility(self):
        """The terms' compatibilities for mean_field: (L, L) matrices, None for Potts; None if all are Potts."""
        return list(self._compat) if any(c is not None for c in self._compat) else None

    def _run(self, iterations, q=None):
        """(N, L) scores after ``iterations`` updates from softmax(scores), or one update from ``q``."""
        if q is None:
            return mean_field(self._scores, self._filters, self._weights, self._compatibility, iterations)
        return self._scores + messages(q, self._filters, self._weights, self._compatibility)

    def _q_points(self, q):
        import torch

        if not isinstance(q, torch.Tensor) or tuple(q.shape) not in (
                (self.num_labels, self.num_points), (self.num_labels, *self.spatial_shape)):
            raise ValueError(f"q must be a tensor shaped like the unary "
                             f"{(self.num_labels, *self.spatial_shape)}, got {getattr(q, 'shape', q)!r}")
        return q.detach().to(self.device, torch.float32).reshape(self.num_labels, -1).T

    def _from_points(self, rows):
        return rows.T.reshape(self.num_labels, *self.spatial_shape).contiguous()

    def initial_q(self):
        import torch

        return self._from_points(torch.softmax(self._scores, dim=1))

    def step(self, q):
        import torch

        return self._from_points(torch.softmax(self._run(1, self._q_points(q)), dim=1))

    def inference(self, iterations=10, *, prune=False):
        import torch

        with torch.no_grad():
            return self._from_points(torch.softmax(self._run(_check_iterations(iterations)), dim=1))

    def map(self, iterations=10, *, prune=False):
        import torch

        with torch.no_grad():
            return self._run(_check_iterations(iterations)).argmax(1).reshape(self.spatial_shape)

    def _infer_points(self, iterations, *, return_q, prune=False):
        import torch

        with torch.no_grad():
            out = self._run(_check_iterations(iterations))
        return (torch.softmax(out, dim=1) if return_q else None), out.argmax(1)

    def kl_divergence(self, q):
        rows = self._q_points(q).double()
        entropy = float((rows * rows.clamp_min(1e-20).log()).sum())
        unary = float((-self._scores.double() * rows).sum())
        # The pairwise energy's messages are minus the mean field's (compat_m(K_m Q) above).
        pairwise = messages(rows.float(), self._filters, self._weights, self._compatibility)
        return entropy + unary - float((rows * pairwise.double()).sum())


