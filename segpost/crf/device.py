"""The dense CRF in torch ops around a lattice: crf_refine on CUDA tensors, and nn.DenseCRF's mean field.

One mean-field loop (:func:`mean_field`) serves ``crf_refine`` on the GPU and
the training layer on every device; the kernels are normalised lattice
filters ``s * K(s * q)`` with ``s = (K 1)^-1/2`` (symmetric normalisation,
as the CPU path). On a GPU the lattice is the CUDA extension
(``segpost._C_cuda``) when it is built, else
:class:`segpost.lattice_torch.TorchLattice`. CPU tensors can take this path
too (``refine``), on the C++ lattice: that is how the tests hold the code
around the lattice equal to crf_refine's CPU path without a GPU.
"""
from __future__ import annotations

import numpy as np

from .._validation import MAX_CRF_SCORE, on_device, tensor_intensity_scale, two_class_scores, refuse_probabilities_as_logits
from .model import _DIAGONAL, _POTTS, DenseCRF, _check_iterations, _normalization_scales

__all__ = ["mean_field", "grid_features", "kernel_filters", "refine", "DeviceDenseCRF"]

# As the CPU path (crf_refine's unary_from_softmax clip).
PROBABILITY_CLIP = 1e-5


def _filter_rows(lattice, values, pre, post, transpose):
    """``post * K(pre * values)`` (K^T with ``transpose``) on a compiled lattice (C++ or CUDA); rows in, rows out.

    The compiled lattices compute in float32; the result has the values' dtype.
    """
    import torch

    from .._cuda import CudaLattice

    if isinstance(lattice, CudaLattice):
        return lattice.filter_rows(values.detach(), pre, post, transpose).to(values.dtype)
    rows = np.ascontiguousarray(values.detach().cpu().numpy(), dtype=np.float32)
    return torch.from_numpy(lattice.filter(rows, transpose, pre, post)).to(values.dtype)


def _compiled_filter_function():
    import torch

    class CompiledFilter(torch.autograd.Function):
        """A normalised lattice filter ``post * K(pre * v)`` whose gradient is the exact adjoint
        ``pre * K^T(post * g)``: the lattice's blur axes in reverse order, the scales swapped."""

        @staticmethod
        def forward(ctx, values, lattice, pre, post):
            ctx.operator = (lattice, pre, post)
            return _filter_rows(lattice, values, pre, post, transpose=False)

        @staticmethod
        def backward(ctx, grad):
            lattice, pre, post = ctx.operator
            return _filter_rows(lattice, grad, post, pre, transpose=True), None, None, None

    return CompiledFilter


CompiledFilter = _compiled_filter_function()


def _messages(q, filters, weights, compatibility):
    """``sum_m weights[m] * (filters[m](q) @ C_m^T)``: what one mean-field update adds to the scores."""
    messages = 0
    for m, kernel in enumerate(filters):
        filtered = kernel(q)
        if compatibility is not None:
            filtered = filtered @ compatibility[m].to(filtered.dtype).T
        messages = messages + weights[m] * filtered
    return messages


def mean_field(scores, filters, weights, compatibility, iterations):
    """``iterations`` mean-field updates of (N, C) scores (negative unary energies): the refined scores.

    ``Q = softmax(scores)``, then ``out = scores + sum_m weights[m] * (filters[m](Q) @ C_m^T)`` and
    ``Q = softmax(out)``; ``compatibility`` (M, C, C), or None for Potts (the identity). Differentiable in
    the scores, weights and compatibilities when the filters are.
    """
    import torch

    out = scores
    for _ in range(iterations):
        out = scores + _messages(torch.softmax(out, dim=1), filters, weights, compatibility)
    return out


def grid_features(image, pos_xy, bi_xy, bi_rgb):
    """The smoothness (N, 2) and appearance (N, 2 + C) features of a (C, H, W) image in 0..255 units.

    Exactly as the CPU path builds them (``DenseCRF.add_gaussian`` /
    ``add_bilateral``): float32 positions, x then y, ``arange * float32(1 /
    sigma)``, and colours divided by a float32 bandwidth.
    """
    import torch

    c, h, w = image.shape
    device = image.device

    def positions(sigma):
        step = float(np.float32(1.0 / sigma))
        xx = (torch.arange(w, device=device, dtype=torch.float32) * step).repeat(h)
        yy = (torch.arange(h, device=device, dtype=torch.float32) * step).repeat_interleave(w)
        return torch.stack([xx, yy], 1)

    colours = image.reshape(c, -1).T.to(torch.float32) / torch.tensor(np.float32(bi_rgb), device=device)
    return positions(pos_xy), torch.cat([positions(bi_xy), colours], 1)


def _lattice(features, compiled, images=1):
    """The compiled lattice for the features' device when ``compiled`` (CUDA when built; the C++ lattice for
    CPU tensors), else the torch lattice; None for a batch (``images`` > 1) that only the CUDA build takes
    as one lattice."""
    from .._cuda import CudaLattice, cuda_extension
    from ..lattice import PermutohedralLattice
    from ..lattice_torch import TorchLattice

    if compiled and features.is_cuda:
        extension = cuda_extension()
        if extension is not None and features.shape[1] <= 16:
            return CudaLattice(features.detach(), extension, images=images)
    if images > 1:
        return None
    if compiled and features.device.type == "cpu":
        return PermutohedralLattice(features.detach().numpy())
    return TorchLattice(features)


def _per_image(filters, q):
    """A batch's rows through each image's own filter."""
    import torch

    return torch.cat([kernel(rows) for kernel, rows in zip(filters, q.chunk(len(filters)))])


def _normalised_filter(lattice, pre, post):
    """``q -> post * K(pre * q)`` on a lattice, with (N,) scales or None: through :data:`CompiledFilter` (the
    exact adjoint as gradient) on the compiled lattices, through autograd on the torch lattice."""
    from .._cuda import CudaLattice
    from ..lattice import PermutohedralLattice

    if isinstance(lattice, PermutohedralLattice):
        pre, post = (None if s is None else np.ascontiguousarray(np.asarray(s), np.float32) for s in (pre, post))
        return lambda q: CompiledFilter.apply(q, lattice._lattice, pre, post)
    if isinstance(lattice, CudaLattice):
        pre, post = (None if s is None else s.float().contiguous() for s in (pre, post))
        return lambda q: CompiledFilter.apply(q, lattice, pre, post)

    def torch_filter(q):
        rows = q if pre is None else pre.to(q.dtype)[:, None] * q
        out = lattice.filter(rows)
        return out if post is None else post.to(q.dtype)[:, None] * out

    return torch_filter


def _filtered_ones(lattice):
    """``K 1`` (N,) float64 on the lattice's device."""
    import torch

    from ..lattice import PermutohedralLattice

    if isinstance(lattice, PermutohedralLattice):
        return torch.from_numpy(lattice._lattice.filter_ones().astype(np.float64))
    return lattice.filtered_ones().double()


def kernel_filters(features, *, compiled=True, images=1, normalization="symmetric"):
    """Normalised filters ``q -> post * K(pre * q)`` of each feature set, each lattice built once.

    With ``compiled``, a compiled lattice (CUDA for CUDA features when built,
    C++ for CPU features) through :data:`CompiledFilter`, whose gradient is
    the exact adjoint; otherwise the torch lattice, differentiable through
    autograd. The scales are the CPU path's (``model._normalization_scales``;
    symmetric by default: ``s * K(s * q)`` with ``s = (K 1)^-1/2``).
    ``images`` > 1: each feature set is a batch of that many images' rows,
    point-major each; the CUDA build makes it one lattice (images share no
    vertex), the others one lattice per image.
    """
    filters = []
    for feature_set in features:
        lattice = _lattice(feature_set, compiled, images)
        if lattice is None:
            per_image = kernel_filters(feature_set.chunk(images), compiled=compiled, normalization=normalization)
            filters.append(lambda q, per_image=per_image: _per_image(per_image, q))
            continue
        filters.append(_normalised_filter(lattice, *_normalization_scales(_filtered_ones(lattice), normalization)))
    return filters


def _check_device_memory(num_points, num_classes, feature_dims, device):
    """MemoryError before allocating a GPU CRF that cannot fit in the device's free memory."""
    import torch

    if device.type != "cuda":
        return
    # Scores, Q, messages, the resize and a filter's input/output per class; per term the corners'
    # vertex ids, weights and CSR entries and about as many vertex rows of C floats, twice (blur).
    estimate = num_points * num_classes * 4 * 8
    estimate += sum(num_points * (d + 1) * (4 + 4 + 4 + 8 + 2 * num_classes * 4) for d in feature_dims)
    free, _ = torch.cuda.mem_get_info(device)
    if estimate > free:
        raise MemoryError(f"this CRF needs about {estimate / 2**30:.1f} GiB of GPU memory ({num_points} points x "
                          f"{num_classes} labels), more than the {free / 2**30:.1f} GiB free on {device}; downscale "
                          f"the image or refine it in tiles")


def refine(image, scores, *, probabilities, params, iterations, align_corners, return_probs, compiled=True):
    """crf_refine in torch ops on the scores' device; see :func:`segpost.crf_refine` for the arguments.

    ``scores``: a (C, h, w) tensor (logits, or probabilities with
    ``probabilities``); ``image``: (H, W, C) numpy or (C, H, W) / (H, W)
    tensor (moved to the scores' device). Returns device tensors.
    """
    import torch
    import torch.nn.functional as F

    from .refine import _scores_fit_image

    name = "probs" if probabilities else "logits"
    device = scores.device
    if not scores.is_floating_point():
        raise TypeError(f"{name} must be floating-point, got dtype {scores.dtype}")
    if scores.ndim != 3 or 0 in scores.shape:
        raise ValueError(f"{name} must be a non-empty (C, h, w) tensor, got shape {tuple(scores.shape)}")
    scores = scores.detach().float()
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f"{name} must be finite, but some entries are NaN or infinite")
    if float(scores.abs().max()) > MAX_CRF_SCORE:
        raise ValueError(f"{name} hold values beyond the {MAX_CRF_SCORE:.3g} that segpost accepts; rescale {name}")
    if scores.shape[0] == 1:
        scores = two_class_scores(scores, probabilities=probabilities)
    elif not probabilities and scores.shape[0] >= 2:
        sample = scores[:, :: max(1, scores.shape[1] // 64), :: max(1, scores.shape[2] // 64)]
        refuse_probabilities_as_logits(sample.cpu().numpy())
    if probabilities:
        total = scores.double().sum(0)
        if float(scores.min()) < -1e-6 or float((total - 1).abs().max()) > max(1e-3, scores.shape[0] * 1.2e-7):
            raise ValueError("probs must be non-negative and sum to 1 over axis 0; pass raw scores as logits= instead")

    if isinstance(image, torch.Tensor):
        img = image.detach().to(device)
        img = img[None] if img.ndim == 2 else img
        if img.ndim != 3:
            raise ValueError(f"image must be (C, H, W) or (H, W), got shape {tuple(image.shape)}")
    else:
        arr = np.asarray(image)
        arr = arr[..., None] if arr.ndim == 2 else arr
        if arr.ndim != 3:
            raise ValueError(f"image must be (H, W, C) or (H, W), got shape {arr.shape}")
        img = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).to(device)
    channels, height, width = img.shape
    if height == 0 or width == 0 or channels == 0 or channels > 16:
        raise ValueError(f"image must be non-empty with at most 16 channels, got shape {tuple(img.shape)}")
    values, scale = tensor_intensity_scale(img)
    colours = values * scale
    num_classes, h, w = scores.shape
    if h > height or w > width:
        raise ValueError(f"{name} ({h}x{w}) are larger than the image ({height}x{width}); crf_refine only upsamples")
    if not _scores_fit_image(h, w, height, width):
        raise ValueError(f"{name} of {h}x{w} do not match the aspect ratio of the {height}x{width} image; are they "
                         f"transposed?")
    _check_device_memory(height * width, num_classes, [2, 2 + channels], device)

    if (h, w) != (height, width):
        scores = F.interpolate(scores[None], size=(height, width), mode="bilinear",
                               align_corners=bool(align_corners))[0]
    rows = scores.reshape(num_classes, -1).T
    if probabilities:
        rows = rows.clamp(PROBABILITY_CLIP, 1.0).log()
    smooth, appearance = grid_features(colours, params.pos_xy, params.bi_xy, params.bi_rgb)
    terms = [(float(weight), features) for weight, features in ((params.pos_weight, smooth),
                                                               (params.bi_weight, appearance)) if weight > 0]
    filters = kernel_filters([features for _, features in terms], compiled=compiled)
    with torch.no_grad():
        out = mean_field(rows, filters, [weight for weight, _ in terms], None, iterations)
    labels = out.argmax(1).reshape(height, width)
    if not return_probs:
        return labels
    return labels, torch.softmax(out, dim=1).T.reshape(num_classes, height, width)


class DeviceDenseCRF(DenseCRF):
    """:class:`segpost.DenseCRF` on the unary tensor's device (``DenseCRF(cuda_unary)`` returns one).

    The same terms and results as the CPU class: the features are built
    by its code (on the host, as it builds them), then the lattices, the
    normalisation and the mean field run on the device (the CUDA lattice,
    else the torch lattice) and Q and the labels are device tensors.
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
        _check_device_memory(self.num_points, self.num_labels, [], self.device)
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

    def _add_grid_term(self, sigma, spacing, kind, potts, compat_arr, kernel, normalization):
        # No grid cache on the device: the positions are built and moved like any features.
        self._add_lattice_term(self._grid_positions(sigma, spacing), kind, potts, compat_arr, kernel, normalization,
                               "gaussian")

    def _add_lattice_term(self, features, kind, potts, compat_arr, kernel, normalization, label):
        import torch

        features = torch.tensor(np.asarray(features, np.float32), device=self.device)
        _check_device_memory(self.num_points, self.num_labels, self._feature_dims + [features.shape[1]],
                             self.device)
        lattice = _lattice(features, compiled=True)
        self._filters.append(_normalised_filter(lattice, *_normalization_scales(_filtered_ones(lattice),
                                                                                normalization)))
        # Q <- softmax(-U - sum_m compat_m(K_m Q)): Potts w is -w x, a diagonal v * x, a matrix M x.
        if kind == _POTTS:
            self._weights.append(potts)
            self._compat.append(torch.eye(self.num_labels, device=self.device))
        else:
            matrix = torch.from_numpy(compat_arr).to(self.device)
            self._weights.append(-1.0)
            self._compat.append(torch.diag(matrix) if kind == _DIAGONAL else matrix)
        self._record_term(label, features.shape[1], kernel, normalization, kind, potts, compat_arr,
                          lattice.num_vertices)

    @property
    def _compatibility(self):
        """The terms' (M, L, L) compatibilities for mean_field, or None without terms."""
        import torch

        return torch.stack(self._compat) if self._compat else None

    def _run(self, iterations, q=None):
        """(N, L) scores after ``iterations`` updates from softmax(scores), or one update from ``q``."""
        if q is None:
            return mean_field(self._scores, self._filters, self._weights, self._compatibility, iterations)
        return self._scores + _messages(q, self._filters, self._weights, self._compatibility)

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
        messages = _messages(rows.float(), self._filters, self._weights, self._compatibility)
        return entropy + unary - float((rows * messages.double()).sum())


