"""torch.nn helpers."""
from __future__ import annotations

import numpy as np

__all__ = ["DenseCRF", "linear_to_conv1x1"]


def linear_to_conv1x1(linear):
    """A Conv2d(in, K, 1) with the weights of a classifier's final Linear(in, K).

    Applied to a (B, in, H, W) feature map it gives, at every position, the
    logits the Linear gives for that position's feature vector: the FCN recipe
    for turning a classification network fully convolutional.

    Parameters
    ----------
    linear : torch.nn.Linear

    Returns
    -------
    torch.nn.Conv2d
        On the Linear's device, in its dtype.

    Raises
    ------
    TypeError
        If ``linear`` is not a ``torch.nn.Linear``.

    Examples
    --------
    >>> import torch
    >>> from segpost.nn import linear_to_conv1x1
    >>> fc = torch.nn.Linear(8, 3)
    >>> conv = linear_to_conv1x1(fc)
    >>> features = torch.randn(2, 8, 5, 7)
    >>> expected = fc(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    >>> torch.allclose(conv(features), expected, atol=1e-6)
    True
    """
    import torch

    if not isinstance(linear, torch.nn.Linear):
        raise TypeError(f"expected a torch.nn.Linear, got {type(linear).__name__}")
    conv = torch.nn.Conv2d(linear.in_features, linear.out_features, kernel_size=1, bias=linear.bias is not None)
    conv = conv.to(device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.reshape(linear.out_features, linear.in_features, 1, 1))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


def _images_in_0_to_255(images):
    """(B, C, H, W) images as float64 intensities 0..255, by segpost's one rule (``intensity_scale``):
    integers 0..255, floats [0, 1]. They are features (no gradient flows to them)."""
    import torch

    from ._validation import tensor_intensity_scale

    values, scale = tensor_intensity_scale(images.detach(), "images", torch.float64)
    return values * scale


def _crf_module_base():
    import torch

    return torch.nn.Module


class DenseCRF(_crf_module_base()):
    """A dense CRF as a differentiable layer (CRF-as-RNN, Zheng et al. 2015).

    The layer for training. Not to be confused with :class:`segpost.DenseCRF`,
    the general model for inference, or
    ``segpost.compat.pydensecrf.densecrf.DenseCRF``, pydensecrf's API. Its
    defaults are pydensecrf's preset (smoothness 3/3, appearance 10/80/13, 5
    iterations), the values CRF-as-RNN trained from; ``crf_refine``'s default
    is DeepLab's (``CRFParams.deeplab()``), tuned for inference without
    training.

    ``forward(logits (B, C, H, W), images (B, 3, H, W))`` runs ``iterations``
    mean-field steps and returns refined logits (B, C, H, W)::

        Q = softmax(logits)
        repeat: out = logits + sum_m w_m * C_m (K_m Q);  Q = softmax(out)

    with ``K_m`` the symmetrically normalised smoothness (x/pos_xy, y/pos_xy)
    and appearance (x/bi_xy, y/bi_xy, rgb/bi_rgb) Gaussian filters, ``w_m``
    learnable kernel weights and ``C_m`` learnable (C, C) compatibility
    matrices, initialised to the identity (the Potts model: the same as
    :func:`segpost.crf_refine` with pos_weight = w_1, bi_weight = w_2).

    Gradients flow to the logits, the kernel weights and the compatibilities.
    The features (positions and colours) and their bandwidths stay fixed, as
    in CRF-as-RNN: no gradient reaches the images or pos_xy/bi_xy/bi_rgb.

    On the CPU each filter runs on segpost's compiled lattice (the one
    ``crf_refine`` uses), through an autograd function whose backward pass is
    the lattice's exact adjoint; each image's two lattices are built once per
    forward and reused by every iteration and by the backward pass. The
    lattice computes in float32 (float64 logits give float64 results of
    float32 accuracy); the GIL is released while it runs. On other devices, or
    with ``lattice="torch"``, the filters run on
    :class:`segpost.lattice_torch.TorchLattice` (pure torch ops, autograd
    through them; the reference the compiled path is tested against).

    Images follow :func:`segpost.crf_refine`'s rule: integers (uint8) hold
    0..255, floats [0, 1]; anything else (an ImageNet-normalised batch, a
    0..255 float tensor) raises instead of running a colour-blind CRF. A batch
    is refined image by image, each with its own lattices.

    Parameters
    ----------
    num_classes : int
    iterations : int, default 5
    pos_xy, bi_xy, bi_rgb : float
        Bandwidths (pixels; image intensities in 0..255).
    pos_weight, bi_weight : float
        Initial kernel weights.
    learnable : bool, default True
        Make the weights and compatibilities trainable parameters.
    lattice : {"auto", "torch"}, keyword-only
        "auto": the compiled lattice on the CPU, the GPU kernels or the torch
        lattice elsewhere; "torch": the torch lattice everywhere.

    Examples
    --------
    >>> import torch
    >>> from segpost.nn import DenseCRF
    >>> crf = DenseCRF(3, iterations=2)
    >>> logits = torch.randn(1, 3, 8, 10, requires_grad=True)
    >>> images = torch.rand(1, 3, 8, 10)                 # [0, 1] floats, or uint8
    >>> out = crf(logits, images)
    >>> out.shape
    torch.Size([1, 3, 8, 10])
    >>> out.sum().backward(); logits.grad.shape
    torch.Size([1, 3, 8, 10])
    """

    def __init__(self, num_classes, *, iterations=5, pos_xy=3.0, bi_xy=80.0, bi_rgb=13.0, pos_weight=3.0,
                 bi_weight=10.0, learnable=True, lattice="auto"):
        import torch

        from ._validation import check_int

        super().__init__()
        num_classes = check_int(num_classes, "num_classes")
        iterations = check_int(iterations, "iterations", minimum=0)
        for name, value in (("pos_xy", pos_xy), ("bi_xy", bi_xy), ("bi_rgb", bi_rgb)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if lattice not in ("auto", "torch"):
            raise ValueError(f"lattice must be 'auto' or 'torch', got {lattice!r}")
        self.num_classes, self.iterations, self.lattice = num_classes, iterations, lattice
        self.pos_xy, self.bi_xy, self.bi_rgb = float(pos_xy), float(bi_xy), float(bi_rgb)
        weights = torch.tensor([float(pos_weight), float(bi_weight)])
        compat = torch.eye(num_classes).repeat(2, 1, 1)
        if learnable:
            self.kernel_weights = torch.nn.Parameter(weights)
            self.compatibility = torch.nn.Parameter(compat)
        else:
            self.register_buffer("kernel_weights", weights)
            self.register_buffer("compatibility", compat)

    def _compiled_filters(self, image):
        """The two kernels of one (3, H, W) 0..255 image on the compiled CPU lattice, as functions of (N, C) rows.

        Built as crf_refine builds them (``segpost.DenseCRF.add_gaussian`` /
        ``add_bilateral``: the same features, the smoothness lattice from the
        same per-size cache), with symmetric normalisation.
        """
        from .crf.device import CompiledFilter
        from .crf.model import DenseCRF as Model

        _, h, w = image.shape
        model = Model._from_point_major(np.zeros((h * w, 2), np.float32), (h, w), num_labels=2)
        model.add_gaussian(self.pos_xy, compat=1.0)
        colors = np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy(), dtype=np.float32)
        model.add_bilateral(colors, self.bi_xy, self.bi_rgb, compat=1.0)
        return [lambda q, op=op: CompiledFilter.apply(q, *op) for op in model._kernel_operators]

    def _device_filters(self, images):
        """The two kernels of a (B, 3, H, W) batch on its device: one CUDA lattice per kernel for the whole
        batch (when built), or the torch lattice per image."""
        import torch

        from .crf.device import grid_features, kernel_filters

        per_image = [grid_features(image, self.pos_xy, self.bi_xy, self.bi_rgb) for image in images]
        features = [torch.cat(kernel) for kernel in zip(*per_image)] if len(images) > 1 else per_image[0]
        return kernel_filters(features, compiled=self.lattice == "auto", images=len(images))

    def forward(self, logits, images):
        import torch

        from .crf.device import _per_image, mean_field

        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be (B, {self.num_classes}, H, W), got {tuple(logits.shape)}")
        if images.ndim != 4 or images.shape[0] != logits.shape[0] or images.shape[2:] != logits.shape[2:]:
            raise ValueError(f"images must be (B, C, H, W) matching the logits, got {tuple(images.shape)}")
        if not logits.is_floating_point():
            raise TypeError(f"logits must be floating-point, got {logits.dtype}")
        b, c, h, w = logits.shape
        images = _images_in_0_to_255(images.to(logits.device))
        if self.lattice == "auto" and logits.device.type == "cpu":
            per_image = [self._compiled_filters(image) for image in images]
            filters = [lambda q, kernel=kernel: _per_image(kernel, q) for kernel in zip(*per_image)]
        else:
            filters = self._device_filters(images)
        # The whole batch as one set of (B*H*W, C) rows: every step of the mean field is per row.
        weights = [self.kernel_weights[m].to(logits.dtype) for m in range(len(filters))]
        rows = logits.permute(0, 2, 3, 1).reshape(b * h * w, c)
        out = mean_field(rows, filters, weights, self.compatibility, self.iterations)
        return out.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
