"""Resizing of logits and label maps with exact, documented conventions.

Bilinear, half-pixel centres (torch ``align_corners=False``, TF2, OpenCV
INTER_LINEAR): the source coordinate of output pixel ``d`` is
``s = (d + 0.5) * n_in / n_out - 0.5``, clamped at 0. Align-corners (torch
``align_corners=True``, TF1, Caffe, DeepLab): ``s = d * (n_in - 1) / (n_out - 1)``.
Nearest-exact (labels): source index ``floor((d + 0.5) * n_in / n_out)``, as
torch ``"nearest-exact"``, OpenCV INTER_NEAREST_EXACT and scikit-image
``order=0``; never bilinear, never ``"nearest"`` (which shifts by half a pixel).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ._memory import check_working_set
from ._threads import torch_fork_safe
from ._validation import (
    FLOAT32_MAX, MAX_FILTER_VALUE, check_bandwidth, check_finite, check_float_dtype, check_int, is_torch_tensor,
    channels_last, like_input, to_numpy,
)

__all__ = [
    "resize_logits", "resize_labels", "deeplab_size", "pad_to_multiple", "crop_to", "upsample_argmax",
    "joint_bilateral_upsample",
]


def _check_size(size, ndims=(2,)):
    """``size`` as a tuple of ints >= 1 whose length is one of ``ndims`` (2: (H, W), 3: (D, H, W))."""
    try:
        values = tuple(size)
        ok = len(values) in ndims and all(isinstance(s, (numbers.Integral, np.integer)) and not isinstance(s, bool)
                                          for s in values)
    except TypeError:
        ok = False
    if not ok or min(values) < 1:
        expected = " or ".join({2: "two positive integers (H, W)", 3: "three positive integers (D, H, W)"}[n]
                               for n in ndims)
        raise ValueError(f"size must be {expected}, got {size!r}")
    return tuple(int(v) for v in values)


def _score_layout(ndim, size, batch, name, *, batch_allowed=True):
    """The one layout rule of the resizers: ``len(size)`` spatial axes after the channel axis, and a leading batch
    axis only with ``batch=True``. A ValueError for anything else, and for the one ambiguous call: a 2-long size
    on 4-D scores, which may be a (B, C, h, w) batch of images or a (C, d, h, w) volume."""
    spatial = len(size)
    axes = "(C, h, w)" if spatial == 2 else "(C, d, h, w)"
    if batch:
        if not batch_allowed:
            raise ValueError(f"{name} takes one {axes} array, not a batch")
        if ndim == spatial + 2:
            return
        raise ValueError(f"with batch=True {name} must be (B, {axes[1:]} for a {spatial}-long size, got {ndim}-D")
    if ndim == spatial + 1:
        return
    if ndim == 4 and spatial == 2:
        fix = ("pass batch=True for a (B, C, h, w) batch of images, or a 3-long size (D, H, W) for a "
               "(C, d, h, w) volume" if batch_allowed else "pass a 3-long size (D, H, W) for a (C, d, h, w) volume")
        raise ValueError(f"{name} is 4-D and size has 2 entries, which is ambiguous: {fix}")
    layouts = f"{axes}" + (f" (or (B, {axes[1:]} with batch=True)" if batch_allowed else "")
    raise ValueError(f"{name} must be a non-empty {layouts} array for a {spatial}-long size, got {ndim}-D")


def _source_coordinates(n_in: int, n_out: int, align_corners: bool):
    """Left/right source index and right weight per output index, in float32 like torch's CPU kernel."""
    d = np.arange(n_out, dtype=np.float32)
    if align_corners:
        scale = np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0.0)
        src = d * scale
    else:
        scale = np.float32(n_in) / np.float32(n_out)
        src = np.maximum((d + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0.0))
    left = np.minimum(src.astype(np.int64), n_in - 1)
    right = np.minimum(left + 1, n_in - 1)
    weight = (src - left).astype(np.float32)
    return left, right, weight


# Below this total weight (in units of one coarse sample at zero distance)
# the joint bilateral average is unsupported: bilinear upsampling stands in.
_MIN_JOINT_WEIGHT = 1e-6


def resize_logits(x, size, *, align_corners=False, batch=False):
    """Bilinearly (trilinearly for volumes) resize logits (or probabilities) to ``size``.

    Numbers are those of ``torch.nn.functional.interpolate`` with
    ``mode="bilinear"`` (2-long ``size``) or ``mode="trilinear"`` (3-long
    ``size``), which computes them, for numpy arrays and torch tensors alike;
    CUDA tensors stay on their device. The half-pixel and align-corners
    conventions are the same along every axis, depth included.
    Differentiable: on a tensor that requires grad the result requires grad
    too, and gradients flow back to ``x`` (float64 tensors are computed in
    float64, for ``gradcheck``).

    The layout follows from ``len(size)`` and ``batch``: a 2-long size takes
    (C, h, w), a 3-long size (C, d, h, w); ``batch=True`` adds a leading batch
    axis. A 4-D ``x`` with a 2-long size is refused: it may be a batch of
    images or a volume, and the function does not guess.

    Parameters
    ----------
    x : (C, h, w), (C, d, h, w), or with ``batch=True`` (B, C, h, w) or (B, C, d, h, w); array_like or torch.Tensor
        Floating scores.
    size : (int, int) or (int, int, int)
        Output (H, W) or (D, H, W), each >= 1.
    align_corners : bool, keyword-only, default False
        False: half-pixel centres (torch's default). True: corner pixels
        aligned, the DeepLab/Caffe convention (sizes ``(n - 1) * s + 1``).
    batch : bool, keyword-only, default False
        True: the first axis of ``x`` is a batch.

    Returns
    -------
    out : ndarray or torch.Tensor, ``x``'s leading axes then ``size``
        float32; float64 for a float64 tensor.

    Raises
    ------
    TypeError
        If ``x`` is not floating.
    ValueError
        If ``x`` does not have the layout above (a 4-D ``x`` with a 2-long
        size without ``batch=True`` included), is empty or not finite, or
        ``size`` is not two or three positive integers.
    MemoryError
        If the output would exceed the working-set limit (``SEGPOST_MAX_MEMORY_GB``).

    Examples
    --------
    >>> import numpy as np
    >>> from segpost import resize_logits
    >>> x = np.arange(4, dtype=np.float32).reshape(1, 2, 2)
    >>> resize_logits(x, (3, 3), align_corners=True)[0]
    array([[0. , 0.5, 1. ],
           [1. , 1.5, 2. ],
           [2. , 2.5, 3. ]], dtype=float32)

    A (C, d, h, w) volume of logits, at a quarter of the in-plane resolution:

    >>> volume = np.zeros((3, 16, 24, 24), np.float32)
    >>> resize_logits(volume, (32, 96, 96)).shape
    (3, 32, 96, 96)
    """
    import torch

    size = _check_size(size, (2, 3))
    if is_torch_tensor(x):
        if not x.is_floating_point():
            raise TypeError(f"x must have a floating dtype, got {x.dtype}")
        shape = tuple(x.shape)
    else:
        arr, _ = to_numpy(x, "x")
        check_float_dtype(arr, "x")
        shape = arr.shape
    _score_layout(len(shape), size, bool(batch), "x")
    if 0 in shape:
        raise ValueError(f"x must be non-empty, got shape {shape}")
    if is_torch_tensor(x):
        if not bool(torch.isfinite(x.detach()).all()):
            raise ValueError("x must be finite, but it contains NaN or infinity")
        # Autograd flows through: a tensor that requires grad gives one that does.
        t = x if x.dtype == torch.float64 else x.float()
    else:
        check_finite(arr, "x", bound=FLOAT32_MAX)
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    batched = t if batch else t[None]
    check_working_set(4 * batched.shape[0] * batched.shape[1] * math.prod(size),
                      f"resize_logits to {'x'.join(map(str, size))} with {batched.shape[1]} channels",
                      "resize a crop at a time (upsample_argmax gives labels without the full-size scores)")
    mode = "bilinear" if len(size) == 2 else "trilinear"
    torch_fork_safe()
    out = torch.nn.functional.interpolate(batched, size=size, mode=mode, align_corners=bool(align_corners))
    out = out if batch else out[0]
    return out if is_torch_tensor(x) else out.numpy()


def _resize_points(scores_chw: np.ndarray, size, align_corners: bool, *, negate: bool = False) -> np.ndarray:
    """(H*W, C) float32, point-major: bilinear resize of (C, h, w) straight into the CRF's layout.

    The compiled kernel blends rows of C floats (C a multiple of 8: the CRF's
    padded label rows) with torch's source coordinates and weights
    (``_source_coordinates``), in parallel, into pooled memory; ``negate``
    gives -scores (a unary from logits) in the same pass. Results equal
    ``resize_logits`` up to float rounding.
    """
    from . import _C

    c, h, w = scores_chw.shape
    height, width = size
    rows = np.ascontiguousarray(np.moveaxis(scores_chw, 0, -1), dtype=np.float32).reshape(h * w, c)
    y_lo, y_hi, y_weight = _source_coordinates(h, height, align_corners)
    x_lo, x_hi, x_weight = _source_coordinates(w, width, align_corners)
    return _C.resize_bilinear_points(rows, h, w, y_lo, y_hi, y_weight, x_lo, x_hi, x_weight, bool(negate))


def _nearest_exact_index(n_in: int, n_out: int) -> np.ndarray:
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.floor((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale).astype(np.int64)
    return np.minimum(src, n_in - 1)


def resize_labels(labels, size):
    """Resize a label map or volume with nearest-exact sampling (pixel centres); any integer dtype.

    The last ``len(size)`` axes are resized: (..., h, w) with a 2-long size,
    (..., d, h, w) with a 3-long size (torch's ``"nearest-exact"`` along
    every axis); leading axes (a batch) are kept as they are. Labels have no
    channel axis, so this rule has no ambiguous case: a (d, h, w) volume with a
    2-long size is resized slice by slice in-plane.

    Parameters
    ----------
    labels : (..., h, w) or (..., d, h, w) integer array_like or torch.Tensor
    size : (int, int) or (int, int, int)

    Returns
    -------
    out : (..., H, W) or (..., D, H, W), the input's dtype and array type (torch stays on its device).

    Examples
    --------
    >>> import numpy as np
    >>> from segpost import resize_labels
    >>> resize_labels(np.array([[0, 1], [2, 255]], np.uint8), (4, 4))
    array([[  0,   0,   1,   1],
           [  0,   0,   1,   1],
           [  2,   2, 255, 255],
           [  2,   2, 255, 255]], dtype=uint8)
    >>> resize_labels(np.zeros((8, 32, 32), np.uint8), (16, 64, 64)).shape
    (16, 64, 64)
    """
    size = _check_size(size, (2, 3))
    n = len(size)
    axes_name = "(..., h, w)" if n == 2 else "(..., d, h, w)"
    if is_torch_tensor(labels):
        if labels.is_floating_point() or labels.is_complex():
            raise TypeError(f"labels must be integers, got {labels.dtype}; never resize labels bilinearly")
        if labels.ndim < n or 0 in tuple(labels.shape[-n:]):
            raise ValueError(f"labels must be a non-empty {axes_name} map, got shape {tuple(labels.shape)}")
        import torch

        out = labels
        for axis, length in zip(range(-n, 0), size):
            index = torch.from_numpy(_nearest_exact_index(labels.shape[axis], length)).to(labels.device)
            out = out.index_select(axis, index)
        return out
    arr, _ = to_numpy(labels, "labels")
    if arr.dtype.kind not in "biu":
        raise TypeError(f"labels must be integers, got {arr.dtype}; never resize labels bilinearly")
    if arr.ndim < n or 0 in arr.shape[-n:]:
        raise ValueError(f"labels must be a non-empty {axes_name} map, got shape {tuple(arr.shape)}")
    index = np.ix_(*(_nearest_exact_index(arr.shape[axis], length) for axis, length in zip(range(-n, 0), size)))
    return arr[(Ellipsis, *index)]


def deeplab_size(dim, scale):
    """DeepLab's resized length ``int((dim - 1) * scale + 1)`` (65 <-> 513 at x8), for align_corners models.

    Parameters
    ----------
    dim : int
        A length, >= 1.
    scale : float
        The resize factor, > 0.

    Returns
    -------
    int

    Raises
    ------
    ValueError
        If ``dim`` < 1 or ``scale`` is not a positive finite number.

    Examples
    --------
    >>> from segpost import deeplab_size
    >>> deeplab_size(513, 0.125), deeplab_size(65, 8)
    (65, 513)
    """
    dim = check_int(dim, "dim")
    if not isinstance(scale, numbers.Real) or not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    return int((dim - 1) * float(scale) + 1)


def pad_to_multiple(image, multiple, *, value=0, axes=(-2, -1)):
    """Pad the bottom and right of ``image`` so that the given axes are multiples of ``multiple``.

    :func:`crop_to` undoes it. Works on numpy arrays and torch tensors (any
    leading axes); on tensors gradients flow through (``torch.nn.functional.pad``).

    Parameters
    ----------
    image : array_like or torch.Tensor
    multiple : int
        The multiple, >= 1 (a model's output stride).
    value : number, keyword-only
        The padding value.
    axes : pair of int, keyword-only
        The axes to pad (default the last two).

    Returns
    -------
    padded : ndarray or torch.Tensor
        ``image`` itself when nothing needs padding.
    original_size : tuple of int
        The sizes of ``axes`` before padding.

    Raises
    ------
    ValueError
        If ``multiple`` < 1.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost import pad_to_multiple, crop_to
    >>> padded, size = pad_to_multiple(np.ones((3, 5, 7)), 4)
    >>> padded.shape, size
    ((3, 8, 8), (5, 7))
    >>> crop_to(padded, size).shape
    (3, 5, 7)
    """
    multiple = check_int(multiple, "multiple")
    if not is_torch_tensor(image):
        image = to_numpy(image, "image")[0]  # lists and other array-likes too
    shape = tuple(image.shape)
    ax = [a % len(shape) for a in axes]
    original = tuple(shape[a] for a in ax)
    extra = {a: (-shape[a]) % multiple for a in ax}
    if not any(extra.values()):
        return image, original
    if is_torch_tensor(image):
        import torch.nn.functional as F

        pads = []
        for a in reversed(range(len(shape))):
            pads += [0, extra.get(a, 0)]
        while pads and pads[-1] == 0 and pads[-2] == 0:
            pads = pads[:-2]
        return F.pad(image, pads, value=value), original
    widths = [(0, extra.get(a, 0)) for a in range(len(shape))]
    return np.pad(image, widths, constant_values=value), original


def crop_to(x, size, *, axes=(-2, -1)):
    """The top-left ``size`` region of ``x`` along ``axes`` (undoes :func:`pad_to_multiple`).

    Parameters
    ----------
    x : ndarray or torch.Tensor
    size : sequence of int
        One size per axis.
    axes : sequence of int, keyword-only
        Default the last two.

    Returns
    -------
    ndarray or torch.Tensor
        A view of ``x`` (on tensors gradients flow through).

    Examples
    --------
    >>> import numpy as np
    >>> from segpost import crop_to
    >>> crop_to(np.zeros((3, 8, 8)), (5, 7)).shape
    (3, 5, 7)
    """
    if not is_torch_tensor(x):
        x = to_numpy(x, "x")[0]  # lists and other array-likes too
    index = [slice(None)] * x.ndim
    for a, s in zip(axes, size):
        index[a % x.ndim] = slice(0, int(s))
    return x[tuple(index)]


def upsample_argmax(logits, size, *, align_corners=False, block_rows=64):
    """Labels at full resolution without ever holding the full (C, H, W) or (C, D, H, W) logits.

    Equivalent to ``resize_logits(logits, size).argmax(0)`` but works in
    blocks of ``block_rows`` output rows (output slices for a volume),
    interpolating only the coarse rows (slices) each block needs: peak memory
    is O(C * block_rows * W) instead of O(C * H * W) (150 classes at
    2048x1024 would be 1.17 GiB in float32); for a volume O(C * H * W) per
    slice instead of O(C * D * H * W).

    Parameters
    ----------
    logits : (C, h, w) or (C, d, h, w) float array_like or torch.Tensor
    size : (int, int) or (int, int, int)
        (H, W) for (C, h, w) logits, (D, H, W) for (C, d, h, w).
    align_corners : bool, keyword-only
    block_rows : int, keyword-only, default 64
        Output rows per block; output depth slices per block for a volume.

    Returns
    -------
    labels : (H, W) or (D, H, W) int64, the input's array type.

    Raises
    ------
    ValueError
        If ``logits`` are not (C, h, w) with a 2-long size or (C, d, h, w)
        with a 3-long size (a 4-D array with a 2-long size included), are
        empty or not finite.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost import upsample_argmax, resize_logits
    >>> logits = np.random.default_rng(0).normal(size=(5, 9, 12)).astype(np.float32)
    >>> labels = upsample_argmax(logits, (70, 90), block_rows=16)
    >>> bool((labels == resize_logits(logits, (70, 90)).argmax(0)).all())
    True
    >>> volume = np.random.default_rng(0).normal(size=(3, 4, 9, 12)).astype(np.float32)
    >>> upsample_argmax(volume, (16, 36, 48), block_rows=4).shape
    (16, 36, 48)
    """
    arr, was_torch = to_numpy(logits.detach().cpu() if is_torch_tensor(logits) else logits, "logits")
    check_float_dtype(arr, "logits")
    block_rows = check_int(block_rows, "block_rows")
    size = _check_size(size, (2, 3))
    _score_layout(arr.ndim, size, False, "logits", batch_allowed=False)
    if 0 in arr.shape:
        raise ValueError(f"logits must be non-empty, got shape {tuple(arr.shape)}")
    check_finite(arr, "logits", bound=FLOAT32_MAX)
    x = arr.astype(np.float32, copy=False)
    if len(size) == 3:
        return like_input(_upsample_argmax_volume(x, size, bool(align_corners), block_rows), was_torch)
    h_out, w_out = size
    top, bottom, wy = _source_coordinates(x.shape[1], h_out, bool(align_corners))
    left, right, wx = _source_coordinates(x.shape[2], w_out, bool(align_corners))
    wx0, wy0 = (1 - wx)[None, None, :], (1 - wy)
    wx1 = wx[None, None, :]
    labels = np.empty((h_out, w_out), np.int64)
    for start in range(0, h_out, block_rows):
        stop = min(h_out, start + block_rows)
        need = np.union1d(top[start:stop], bottom[start:stop])
        coarse = x[:, need, :]                                 # (C, rows needed, w)
        cols = wx0 * coarse[:, :, left] + wx1 * coarse[:, :, right]   # (C, rows needed, W), the x pass
        where = {row: i for i, row in enumerate(need)}
        it = np.array([where[r] for r in top[start:stop]])
        ib = np.array([where[r] for r in bottom[start:stop]])
        block = wy0[start:stop, None] * cols[:, it, :] + wy[start:stop, None] * cols[:, ib, :]
        labels[start:stop] = block.argmax(axis=0)
    return like_input(labels, was_torch)


def _bilinear_slices(x, size, align_corners):
    """(C, n, H, W) float32: each (C, h, w) slice of (C, n, h, w) resized in-plane, x pass then y pass."""
    h_out, w_out = size
    top, bottom, wy = _source_coordinates(x.shape[2], h_out, align_corners)
    left, right, wx = _source_coordinates(x.shape[3], w_out, align_corners)
    cols = (1 - wx) * x[..., left] + wx * x[..., right]                  # (C, n, h, W)
    return (1 - wy)[:, None] * cols[:, :, top, :] + wy[:, None] * cols[:, :, bottom, :]


def _upsample_argmax_volume(x, size, align_corners, block_slices):
    """(D, H, W) int64 labels of trilinearly resized (C, d, h, w) logits, ``block_slices`` output slices at a time.

    Each block resizes only the coarse slices it needs in-plane, then blends
    them along depth with torch's source coordinates (``_source_coordinates``),
    so that only O(C H W) per slice is ever held.
    """
    d_out, h_out, w_out = size
    front, back, wd = _source_coordinates(x.shape[1], d_out, align_corners)
    labels = np.empty(size, np.int64)
    for start in range(0, d_out, block_slices):
        stop = min(d_out, start + block_slices)
        need = np.union1d(front[start:stop], back[start:stop])
        planes = _bilinear_slices(x[:, need], (h_out, w_out), align_corners)   # (C, slices needed, H, W)
        where = {s: i for i, s in enumerate(need)}
        i_front = np.array([where[s] for s in front[start:stop]])
        i_back = np.array([where[s] for s in back[start:stop]])
        weight = wd[start:stop, None, None]
        block = (1 - weight) * planes[:, i_front] + weight * planes[:, i_back]
        labels[start:stop] = block.argmax(axis=0)
    return labels


def joint_bilateral_upsample(coarse_logits, guide_image, *, sigma_spatial, sigma_color, align_corners=False):
    """Edge-aware upsampling of coarse scores guided by the full-resolution image.

    Each output pixel averages the coarse scores with weights
    ``exp(-|p - q|^2 / (2 sigma_spatial^2) - |I_p - I_q|^2 / (2 sigma_color^2))``,
    where q runs over the coarse samples placed at their positions in the
    full-resolution image (their pixel centres, or corners with
    ``align_corners``) and ``I_q`` is the guide's colour there (Kopf et al.
    2007), computed on the permutohedral lattice in O(H W).

    Parameters
    ----------
    coarse_logits : (C, h, w) float array_like or torch.Tensor
    guide_image : (H, W), numpy (H, W, C) or torch (C, H, W) (uint8 or float)
    sigma_spatial : float, keyword-only
        In full-resolution pixels; about the output stride works well.
    sigma_color : float, keyword-only
        In the guide's intensity units.

    align_corners : bool, keyword-only
        Where the coarse samples sit: pixel centres (False, PyTorch's
        default) or corners (DeepLab-style sizes).

    Returns
    -------
    (C, H, W) float32
        numpy for numpy scores, a CPU tensor for torch scores. Differentiable
        in the scores: gradients flow back through the lattice's exact adjoint
        (the guide is a fixed feature).

    Raises
    ------
    ValueError
        On empty or non-finite scores, scores larger than the guide, or
        non-positive bandwidths.
    TypeError
        If the scores are not floating-point.

    Examples
    --------
    >>> import numpy as np
    >>> from skimage import data
    >>> from segpost import joint_bilateral_upsample
    >>> guide = data.astronaut()[:64, :64]
    >>> coarse = np.random.default_rng(0).normal(size=(3, 8, 8)).astype(np.float32)
    >>> joint_bilateral_upsample(coarse, guide, sigma_spatial=8, sigma_color=20).shape
    (3, 64, 64)
    """
    from .lattice import MAX_LATTICE_DIM, PermutohedralLattice, lattice_bytes

    scores, was_torch = to_numpy(coarse_logits.detach().cpu() if is_torch_tensor(coarse_logits) else coarse_logits, "coarse_logits")
    check_float_dtype(scores, "coarse_logits")
    if scores.ndim != 3 or 0 in scores.shape:
        raise ValueError(f"coarse_logits must be a non-empty (C, h, w) array, got shape {tuple(scores.shape)}")
    check_finite(scores, "coarse_logits", bound=MAX_FILTER_VALUE)
    guide, _, _ = channels_last(guide_image, name="guide_image")  # numpy (H, W, C), torch (C, H, W)
    if 0 in guide.shape:
        raise ValueError(f"guide_image must not be empty, got shape {tuple(np.shape(guide_image))}")
    sigma_spatial = check_bandwidth(sigma_spatial, "sigma_spatial")
    sigma_color = check_bandwidth(sigma_color, "sigma_color")
    c, h, w = scores.shape
    height, width = guide.shape[:2]
    if h > height or w > width:
        raise ValueError(f"coarse_logits ({h}x{w}) are larger than the guide image ({height}x{width})")
    if guide.dtype.kind not in "biuf":
        raise TypeError(f"guide_image must have a real numeric dtype, got {guide.dtype}")
    check_finite(guide, "guide_image", bound=FLOAT32_MAX)
    if 2 + guide.shape[2] > MAX_LATTICE_DIM:
        raise ValueError(
            f"guide_image has {guide.shape[2]} channels: with the 2 positions that is more than the lattice's "
            f"{MAX_LATTICE_DIM} feature dimensions; reduce the guide's channels (e.g. PCA)"
        )
    num_points = height * width + h * w
    check_working_set(lattice_bytes(num_points, 2 + guide.shape[2], c + 1) + 8 * height * width * c,
                      f"joint_bilateral_upsample to {height}x{width} with {c} channels", "upsample a crop at a time")
    colors = guide.astype(np.float32).reshape(height, width, -1)
    # Positions of the coarse samples in full-resolution pixel coordinates.
    if align_corners:
        ys = np.arange(h) * ((height - 1) / max(h - 1, 1))
        xs = np.arange(w) * ((width - 1) / max(w - 1, 1))
    else:
        ys = (np.arange(h) + 0.5) * height / h - 0.5
        xs = (np.arange(w) + 0.5) * width / w - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    sample_colors = colors[np.clip(np.rint(yy).astype(int), 0, height - 1), np.clip(np.rint(xx).astype(int), 0, width - 1)]
    fy, fx = np.mgrid[0:height, 0:width]
    fine = np.concatenate([np.stack([fy.ravel(), fx.ravel()], 1) / sigma_spatial,
                           colors.reshape(-1, colors.shape[2]) / sigma_color], 1)
    coarse = np.concatenate([np.stack([yy.ravel(), xx.ravel()], 1) / sigma_spatial,
                             sample_colors.reshape(-1, colors.shape[2]) / sigma_color], 1)
    features = np.concatenate([fine, coarse]).astype(np.float32)
    return _joint_bilateral_average(coarse_logits if was_torch else scores, PermutohedralLattice(features),
                                    (height, width), align_corners)


def _joint_bilateral_average(scores, lattice, size, align_corners):
    """The joint bilateral average of (C, h, w) scores over ``lattice`` (the full-resolution pixels, then the
    coarse samples): numpy scores give float32 numpy, tensors a float32 CPU tensor through which autograd
    flows (the lattice filter's gradient is its exact adjoint)."""
    import torch

    from .lattice.autograd import lattice_filter

    was_torch = is_torch_tensor(scores)
    t = scores.cpu().float() if was_torch else torch.from_numpy(np.asarray(scores, np.float32))
    c = t.shape[0]
    height, width = size
    rows = t.reshape(c, -1).T
    coarse = torch.cat([rows, torch.ones(len(rows), 1)], 1)
    values = torch.cat([torch.zeros(height * width, c + 1), coarse])
    filtered = lattice_filter(lattice)(values)[: height * width]
    weight = filtered[:, c].detach()
    # A pixel with no coarse sample of its colour nearby has (almost) no
    # weight: its ratio would be noise (0 or +-1e11 where the weight
    # underflowed or came out slightly negative). It takes the bilinear
    # upsampling instead; every other pixel is a weighted average, so it is
    # kept within the coarse scores' range against rounding.
    supported = weight > _MIN_JOINT_WEIGHT
    out = filtered[:, :c] / torch.where(supported, weight, torch.ones_like(weight))[:, None]
    out = torch.minimum(torch.maximum(out, rows.min(0).values), rows.max(0).values)
    if not bool(supported.all()):
        bilinear = resize_logits(t, (height, width), align_corners=align_corners).reshape(c, -1).T
        out = torch.where(supported[:, None], out, bilinear)
    out = out.T.reshape(c, height, width).contiguous()
    return out if was_torch else out.detach().numpy()
