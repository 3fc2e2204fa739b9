"""torch.nn helpers."""
from __future__ import annotations

import numpy as np

__all__ = ["BilinearUpsample2d", "DenseCRF", "DenseCRFLoss", "linear_to_conv1x1"]


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


def _check_kernel_weight(value, name):
    """A kernel weight: a finite number >= 0 (0 switches the kernel off), or a TypeError/ValueError naming it."""
    import numbers

    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


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
    :class:`segpost.lattice.TorchLattice` (pure torch ops, autograd
    through them; the reference the compiled path is tested against).

    Images follow :func:`segpost.crf_refine`'s rule: integers (uint8) hold
    0..255, floats [0, 1]; anything else (an ImageNet-normalised batch, a
    0..255 float tensor) raises instead of running a colour-blind CRF. A batch
    is refined image by image, each with its own lattices.

    float16/bfloat16 logits and ``torch.autocast`` regions are computed in
    float32 inside and the result is cast back to the logits' dtype. Logits
    with NaN or infinity raise a ValueError (they would turn every kernel
    weight's gradient into NaN); an empty batch (B = 0) returns an empty
    output.

    Parameters
    ----------
    num_classes : int
    iterations : int, default 5
    pos_xy, bi_xy, bi_rgb : float
        Bandwidths (pixels; image intensities in 0..255), finite and > 0.
    pos_weight, bi_weight : float
        Initial kernel weights, finite and >= 0.
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

    Raises
    ------
    TypeError
        If a number parameter is not a number, or the logits are not floating-point.
    ValueError
        If a bandwidth is not finite and positive, a kernel weight not finite
        and >= 0, or the logits are not finite or do not match the images.
    """

    def __init__(self, num_classes, *, iterations=5, pos_xy=3.0, bi_xy=80.0, bi_rgb=13.0, pos_weight=3.0,
                 bi_weight=10.0, learnable=True, lattice="auto"):
        import torch

        from ._validation import check_bandwidth, check_int

        super().__init__()
        num_classes = check_int(num_classes, "num_classes")
        iterations = check_int(iterations, "iterations", minimum=0)
        pos_xy, bi_xy, bi_rgb = (check_bandwidth(value, name) for name, value in (
            ("pos_xy", pos_xy), ("bi_xy", bi_xy), ("bi_rgb", bi_rgb)))
        pos_weight, bi_weight = (_check_kernel_weight(value, name) for name, value in (
            ("pos_weight", pos_weight), ("bi_weight", bi_weight)))
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
        from .crf.model import DenseCRF as Model
        from .lattice.autograd import lattice_filter

        _, h, w = image.shape
        model = Model._from_point_major(np.zeros((h * w, 2), np.float32), (h, w), num_labels=2)
        model.add_gaussian(self.pos_xy, compat=1.0)
        colors = np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy(), dtype=np.float32)
        model.add_bilateral(colors, self.bi_xy, self.bi_rgb, compat=1.0)
        return [lattice_filter(*operator) for operator in model._kernel_operators]

    def _device_filters(self, images):
        """The two kernels of a (B, 3, H, W) batch on its device: one CUDA lattice per kernel for the whole
        batch (when built), or the torch lattice per image."""
        import torch

        from .crf.mean_field import grid_features, kernel_filters

        per_image = [grid_features(image, self.pos_xy, self.bi_xy, self.bi_rgb) for image in images]
        features = [torch.cat(kernel) for kernel in zip(*per_image)] if len(images) > 1 else per_image[0]
        return kernel_filters(features, compiled=self.lattice == "auto", images=len(images))

    def forward(self, logits, images):
        import torch

        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be (B, {self.num_classes}, H, W), got {tuple(logits.shape)}")
        if images.ndim != 4 or images.shape[0] != logits.shape[0] or images.shape[2:] != logits.shape[2:]:
            raise ValueError(f"images must be (B, C, H, W) matching the logits, got {tuple(images.shape)}")
        if not logits.is_floating_point():
            raise TypeError(f"logits must be floating-point, got {logits.dtype}")
        if logits.numel() == 0:
            return logits.clone()
        if not bool(torch.isfinite(logits.detach()).all()):
            raise ValueError("logits must be finite, but some entries are NaN or infinite")
        # float32 inside (float64 stays float64), whatever autocast or the logits' half dtype would pick:
        # the lattice computes in float32 and a softmax of bfloat16 scores loses the small messages.
        compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
        with torch.autocast(logits.device.type, enabled=False):
            out = self._refine(logits.to(compute), images)
        return out.to(logits.dtype)

    def _refine(self, logits, images):
        from .crf.mean_field import mean_field, per_image

        b, c, h, w = logits.shape
        images = _images_in_0_to_255(images.to(logits.device))
        if self.lattice == "auto" and logits.device.type == "cpu":
            each_image = [self._compiled_filters(image) for image in images]
            filters = [lambda q, kernel=kernel: per_image(kernel, q) for kernel in zip(*each_image)]
        else:
            filters = self._device_filters(images)
        # The whole batch as one set of (B*H*W, C) rows: every step of the mean field is per row.
        weights = [self.kernel_weights[m].to(logits.dtype) for m in range(len(filters))]
        rows = logits.permute(0, 2, 3, 1).reshape(b * h * w, c)
        out = mean_field(rows, filters, weights, self.compatibility, self.iterations)
        return out.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()


def _bilinear_kernel(kernel_size):
    """FCN's ``upsample_filt``: the (k, k) bilinear interpolation kernel, float64."""
    factor = (kernel_size + 1) // 2
    centre = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    taps = 1 - np.abs(np.arange(kernel_size) - centre) / factor
    return np.outer(taps, taps)


class BilinearUpsample2d(_crf_module_base()):
    """FCN's learnable upsampling: a transposed convolution initialised to bilinear interpolation.

    A ``conv_transpose2d`` with stride ``factor``, kernel size ``k = 2 *
    factor - factor % 2`` and padding ``factor // 2``, so that a
    (B, C, h, w) input becomes exactly (B, C, factor * h, factor * w) without
    cropping. Its (C, C, k, k) weight starts as fcn.berkeleyvision.org's
    ``upsample_filt`` (Long et al. 2015) on the channel diagonal and zero
    elsewhere (no channel mixing)::

        f = (k + 1) // 2,  c = f - 1 (k odd) or f - 0.5 (k even)
        weight[i, i, u, v] = (1 - |u - c| / f) * (1 - |v - c| / f)

    At initialisation it equals ``F.interpolate(x, scale_factor=factor,
    mode="bilinear", align_corners=False)`` away from the border (the
    outermost ``factor`` output pixels differ: the transposed convolution
    sees zeros beyond the input where interpolation repeats the edge). FCN
    keeps the final x32/x16/x8 upsampling fixed (``learnable=False``) and
    learns the x2 ones of its skip heads.

    Parameters
    ----------
    channels : int
        Input and output channels (the number of classes in an FCN head).
    factor : int
        The upsampling factor, >= 1.
    learnable : bool, keyword-only, default True
        The weight is a trainable ``Parameter``; False keeps it a fixed buffer.

    Raises
    ------
    TypeError, ValueError
        If ``channels`` or ``factor`` is not a positive integer.

    Examples
    --------
    >>> import torch
    >>> import torch.nn.functional as F
    >>> from segpost.nn import BilinearUpsample2d
    >>> up = BilinearUpsample2d(3, 2)
    >>> x = torch.randn(1, 3, 6, 6)
    >>> y = up(x)
    >>> y.shape
    torch.Size([1, 3, 12, 12])
    >>> bilinear = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    >>> torch.allclose(y[..., 2:-2, 2:-2], bilinear[..., 2:-2, 2:-2], atol=1e-6)
    True

    An FCN-8s head (Long et al. 2015) on a backbone's stride-32, 16 and 8
    features: score each, upsample x2 and add, then x8 to the input size:

    >>> class FCN8sHead(torch.nn.Module):
    ...     def __init__(self, channels32, channels16, channels8, num_classes):
    ...         super().__init__()
    ...         self.score32 = torch.nn.Conv2d(channels32, num_classes, 1)
    ...         self.score16 = torch.nn.Conv2d(channels16, num_classes, 1)
    ...         self.score8 = torch.nn.Conv2d(channels8, num_classes, 1)
    ...         self.up32 = BilinearUpsample2d(num_classes, 2)
    ...         self.up16 = BilinearUpsample2d(num_classes, 2)
    ...         self.up8 = BilinearUpsample2d(num_classes, 8, learnable=False)
    ...     def forward(self, c32, c16, c8):
    ...         x = self.up32(self.score32(c32)) + self.score16(c16)
    ...         x = self.up16(x) + self.score8(c8)
    ...         return self.up8(x)
    >>> head = FCN8sHead(512, 256, 128, num_classes=21)
    >>> head(torch.randn(2, 512, 4, 4), torch.randn(2, 256, 8, 8), torch.randn(2, 128, 16, 16)).shape
    torch.Size([2, 21, 128, 128])
    """

    def __init__(self, channels, factor, *, learnable=True):
        import torch

        from ._validation import check_int

        super().__init__()
        self.channels = check_int(channels, "channels")
        self.factor = check_int(factor, "factor")
        self.kernel_size = 2 * self.factor - self.factor % 2
        self.padding = self.factor // 2
        weight = torch.zeros(self.channels, self.channels, self.kernel_size, self.kernel_size)
        kernel = torch.from_numpy(_bilinear_kernel(self.kernel_size)).float()
        weight[range(self.channels), range(self.channels)] = kernel
        if learnable:
            self.weight = torch.nn.Parameter(weight)
        else:
            self.register_buffer("weight", weight)

    def forward(self, x):
        import torch.nn.functional as F

        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"x must be (B, {self.channels}, h, w), got {tuple(x.shape)}")
        return F.conv_transpose2d(x, self.weight.to(x.dtype), stride=self.factor, padding=self.padding)

    def extra_repr(self):
        return f"{self.channels}, factor={self.factor}, kernel_size={self.kernel_size}, padding={self.padding}"


def _bilateral_features(images, sigma_rgb, sigma_xy):
    """(B*h*w, 2 + C) float32 features of a (B, C, h, w) 0..255 batch, as rloss builds them: x / sigma_xy,
    y / sigma_xy, then each channel / sigma_rgb; point-major per image, rows in raster order."""
    import torch

    b, c, h, w = images.shape
    device = images.device
    sigma_xy, sigma_rgb = (torch.tensor(np.float32(s), device=device) for s in (sigma_xy, sigma_rgb))
    xx = (torch.arange(w, device=device, dtype=torch.float32) / sigma_xy).repeat(h)
    yy = (torch.arange(h, device=device, dtype=torch.float32) / sigma_xy).repeat_interleave(w)
    positions = torch.stack([xx, yy], 1).repeat(b, 1)
    colours = images.to(torch.float32).permute(0, 2, 3, 1).reshape(b * h * w, c) / sigma_rgb
    return torch.cat([positions, colours], 1)


def _unnormalised_filter(features, images):
    """``q -> K q`` on a batch's (N, C) rows, K the raw lattice sum of each image (no normalisation), with
    the exact adjoint as gradient on the compiled lattices: one CUDA lattice for the batch when built, one
    lattice per image otherwise."""
    from .crf.mean_field import per_image
    from .lattice import lattice_for
    from .lattice.autograd import lattice_filter

    lattice = lattice_for(features, images=images)
    if lattice is not None:
        return lattice_filter(lattice)
    each_image = [lattice_filter(lattice_for(part)) for part in features.chunk(images)]
    return lambda q: per_image(each_image, q)


class DenseCRFLoss(_crf_module_base()):
    """The dense CRF loss for weakly-supervised segmentation (Tang et al. 2018 [Tang2018]_, rloss).

    Added to a partial cross-entropy on scribbles or boxes, it rewards
    segmentations whose label changes follow the image's edges::

        loss = weight * -sum_k S_k' W S_k / B

    with ``S_k`` the softmax probabilities of class k masked by the region of
    interest, ``W`` the bilateral kernel ``exp(-|f_i - f_j|^2 / 2)`` over
    features ``(x / sigma_xy, y / sigma_xy, I / sigma_rgb)`` computed by the
    permutohedral lattice without normalisation (as rloss computes it with
    Krähenbühl's lattice) and B the batch size. It is the relaxed Potts
    energy ``sum_k S_k' W (1 - S_k)`` up to a constant, so it is negative.
    As in rloss, images, probabilities and region of interest are first
    resized by ``scale_factor`` (images and region nearest, probabilities
    bilinearly) and ``sigma_xy`` is scaled alike.

    ``forward(images (B, C, H, W), probs (B, K, H, W), roi (B, H, W))``
    returns the loss as a 0-d tensor: images uint8 0..255 (or floats in [0,
    1], segpost's intensity rule) with any number of channels (rloss takes
    RGB only), ``probs`` softmax probabilities, ``roi`` 1 where the loss
    applies (0 for padding; any real weights).

    The gradient is exact: ``-(W S + W^T S) / B`` (masked and resized back),
    with ``W^T`` the lattice's exact adjoint. rloss uses ``-2 W S / B``, which
    assumes a symmetric W; the lattice's W is symmetric only approximately
    (on photos the two gradients differ by 3-6% in norm), and only the exact
    one is the gradient of the loss it reports.

    On the CPU, W is segpost's compiled lattice, one per image; on a CUDA
    device the CUDA lattice (one for the batch) when built, else the torch
    lattice. It computes in float32 (float64 probabilities give a float64
    loss of float32 accuracy), also under ``torch.autocast``.

    Parameters
    ----------
    weight : float, keyword-only, default 2e-9
        rloss's default for VOC-size images; the loss is a sum over pixel
        pairs, so it grows with the square of the image size: scale the
        weight down by the square of the number of pixels for smaller images.
    sigma_rgb : float, keyword-only, default 15.0
        Colour bandwidth, in 0..255 intensity units.
    sigma_xy : float, keyword-only, default 100.0
        Spatial bandwidth, in pixels of the full-resolution image.
    scale_factor : float, keyword-only, default 0.5
        Resize factor applied before the loss (1 computes it at full size).

    Raises
    ------
    TypeError, ValueError
        If a parameter is not a finite number (weight >= 0, the others > 0).

    References
    ----------
    .. [Tang2018] M. Tang, F. Perazzi, A. Djelouah, I. Ben Ayed, C. Schroers,
       Y. Boykov. "On Regularized Losses for Weakly-supervised CNN
       Segmentation". ECCV 2018.

    Examples
    --------
    >>> import torch
    >>> from segpost.nn import DenseCRFLoss
    >>> crf_loss = DenseCRFLoss(weight=1e-6, sigma_rgb=15.0, sigma_xy=20.0, scale_factor=0.5)
    >>> images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    >>> logits = torch.randn(2, 4, 32, 32, requires_grad=True)
    >>> roi = torch.ones(2, 32, 32)
    >>> loss = crf_loss(images, torch.softmax(logits, dim=1), roi)
    >>> loss.shape, bool(loss < 0)
    (torch.Size([]), True)
    >>> loss.backward(); logits.grad.shape
    torch.Size([2, 4, 32, 32])
    """

    def __init__(self, *, weight=2e-9, sigma_rgb=15.0, sigma_xy=100.0, scale_factor=0.5):
        from ._validation import check_bandwidth, check_positive_number

        super().__init__()
        self.weight = _check_kernel_weight(weight, "weight")
        self.sigma_rgb = check_bandwidth(sigma_rgb, "sigma_rgb")
        self.sigma_xy = check_bandwidth(sigma_xy, "sigma_xy")
        self.scale_factor = check_positive_number(scale_factor, "scale_factor")

    def extra_repr(self):
        return (f"weight={self.weight:g}, sigma_rgb={self.sigma_rgb:g}, sigma_xy={self.sigma_xy:g}, "
                f"scale_factor={self.scale_factor:g}")

    def forward(self, images, probs, roi):
        import torch

        from .lattice import MAX_LATTICE_DIM

        for name, value in (("images", images), ("probs", probs), ("roi", roi)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if probs.ndim != 4:
            raise ValueError(f"probs must be (B, K, H, W), got shape {tuple(probs.shape)}")
        if not probs.is_floating_point():
            raise TypeError(f"probs must be floating-point softmax probabilities, got {probs.dtype}")
        b, _, h, w = probs.shape
        if images.ndim != 4 or images.shape[0] != b or tuple(images.shape[2:]) != (h, w) or images.shape[1] == 0:
            raise ValueError(f"images must be (B, C, H, W) matching probs {tuple(probs.shape)}, got shape "
                             f"{tuple(images.shape)}")
        if 2 + images.shape[1] > MAX_LATTICE_DIM:
            raise ValueError(f"images have {images.shape[1]} channels: with the 2 positions that is more than the "
                             f"lattice's {MAX_LATTICE_DIM} feature dimensions")
        if tuple(roi.shape) != (b, h, w):
            raise ValueError(f"roi must be (B, H, W) = {(b, h, w)}, got shape {tuple(roi.shape)}")
        if roi.is_complex():
            raise TypeError(f"roi must hold real numbers, got {roi.dtype}")
        dtype = torch.float64 if probs.dtype == torch.float64 else torch.float32
        if probs.numel() == 0:
            return (probs.sum() * 0).to(dtype)
        with torch.autocast(probs.device.type, enabled=False):
            loss = self._loss(images.to(probs.device), probs.to(dtype), roi.to(probs.device, dtype))
        # Non-finite probabilities or region weights make the loss non-finite: checked on the scalar, so
        # that a training step pays for no pass over the inputs (the inputs are searched only to say which).
        if not bool(torch.isfinite(loss.detach())):
            name = "probs" if not bool(torch.isfinite(probs.detach()).all()) else "roi"
            raise ValueError(f"{name} must be finite, but some entries are NaN or infinite (the loss is {loss.item()})")
        return loss

    def _loss(self, images, probs, roi):
        import torch
        import torch.nn.functional as F

        from ._validation import tensor_intensity_scale

        images, scale = tensor_intensity_scale(images.detach(), "images", torch.float32)
        images = images * scale if scale != 1 else images
        sigma_xy = self.sigma_xy
        if self.scale_factor != 1:
            size = tuple(int(np.floor(n * self.scale_factor)) for n in probs.shape[2:])
            if min(size) < 1:
                raise ValueError(f"scale_factor {self.scale_factor:g} shrinks the {tuple(probs.shape[2:])} "
                                 f"images to nothing")
            # rloss's resizing: nearest for the images and the region, bilinear for the probabilities.
            images = F.interpolate(images, scale_factor=self.scale_factor)
            probs = F.interpolate(probs, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)
            roi = F.interpolate(roi[:, None], scale_factor=self.scale_factor)[:, 0]
            sigma_xy = sigma_xy * self.scale_factor
        b, k, h, w = probs.shape
        segmentation = (probs * roi[:, None]).permute(0, 2, 3, 1).reshape(b * h * w, k)
        kernel = _unnormalised_filter(_bilateral_features(images, self.sigma_rgb, sigma_xy), b)
        energy = (segmentation * kernel(segmentation)).sum(dtype=torch.float64)
        return (-self.weight / b * energy).to(probs.dtype)
