"""Resizing of logits and label maps with exact, documented conventions.

Bilinear, half-pixel centres (torch ``align_corners=False``, TF2, OpenCV
INTER_LINEAR): the source coordinate of output pixel ``d`` is
``s = (d + 0.5) * n_in / n_out - 0.5``, clamped at 0. Align-corners (torch
``align_corners=True``, Caffe, DeepLab): ``s = d * (n_in - 1) / (n_out - 1)``.
"""
from __future__ import annotations

import numpy as np

from ._validation import check_finite, check_float_dtype, like_input, to_numpy

__all__ = ["resize_logits"]


def _source_coordinates(n_in: int, n_out: int, align_corners: bool):
    """Left neighbour, right neighbour and right weight for every output index (float32, like torch)."""
    d = np.arange(n_out, dtype=np.float32)
    if align_corners:
        scale = np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0.0)
        src = d * scale
    else:
        scale = np.float32(n_in / n_out)
        src = np.maximum((d + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0.0))
    left = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    right = np.minimum(left + 1, n_in - 1)
    weight = (src - left).astype(np.float32)
    return left, right, weight


def _resize_bilinear(x: np.ndarray, size, align_corners: bool) -> np.ndarray:
    """Bilinear resize of the last two axes of a float32 array."""
    h_out, w_out = size
    h_in, w_in = x.shape[-2:]
    top, bottom, wy = _source_coordinates(h_in, h_out, align_corners)
    left, right, wx = _source_coordinates(w_in, w_out, align_corners)
    wx = wx[None, :]
    wy = wy[:, None]
    # Same expression as torch's CPU kernel: blend rows, then columns.
    t = x[..., top, :]
    b = x[..., bottom, :]
    return ((1 - wy) * ((1 - wx) * t[..., left] + wx * t[..., right]) + wy * ((1 - wx) * b[..., left] + wx * b[..., right])).astype(np.float32)


def _resize_bilinear_channels_last(x: np.ndarray, size, align_corners: bool) -> np.ndarray:
    """Bilinear resize of the first two axes of an (h, w, C) float32 array."""
    h_out, w_out = size
    top, bottom, wy = _source_coordinates(x.shape[0], h_out, align_corners)
    left, right, wx = _source_coordinates(x.shape[1], w_out, align_corners)
    wx = wx[None, :, None]
    wy = wy[:, None, None]
    t = x[top]
    b = x[bottom]
    out = (1 - wy) * ((1 - wx) * t[:, left] + wx * t[:, right]) + wy * ((1 - wx) * b[:, left] + wx * b[:, right])
    return out.astype(np.float32, copy=False)


def resize_logits(x, size, *, align_corners=False):
    """Bilinearly resize logits (or probabilities) to ``size``.

    Parameters
    ----------
    x : (C, h, w) or (B, C, h, w) array_like or torch.Tensor
        Floating scores.
    size : (int, int)
        Output (H, W), each >= 1.
    align_corners : bool, keyword-only, default False
        False: half-pixel centres (torch's default). True: corner pixels
        aligned, the DeepLab/Caffe convention (sizes ``(n - 1) * s + 1``).

    Returns
    -------
    out : ndarray or torch.Tensor
        float32, (C, H, W) or (B, C, H, W), the input's array type.

    Raises
    ------
    TypeError
        If ``x`` is not floating.
    ValueError
        If ``x`` is not 3-D or 4-D, is empty or not finite, or ``size`` is not
        two positive integers.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.upsample import resize_logits
    >>> x = np.arange(4, dtype=np.float32).reshape(1, 2, 2)
    >>> resize_logits(x, (3, 3), align_corners=True)[0]
    array([[0. , 0.5, 1. ],
           [1. , 1.5, 2. ],
           [2. , 2.5, 3. ]], dtype=float32)
    """
    arr, was_torch = to_numpy(x, "x")
    check_float_dtype(arr, "x")
    if arr.ndim not in (3, 4) or 0 in arr.shape:
        raise ValueError(f"x must be a non-empty (C, h, w) or (B, C, h, w) array, got shape {tuple(arr.shape)}")
    size = _check_size(size)
    check_finite(arr, "x")
    arr = arr.astype(np.float32, copy=False)
    out = arr if tuple(arr.shape[-2:]) == size else _resize_bilinear(arr, size, bool(align_corners))
    return like_input(np.ascontiguousarray(out), was_torch)


def _check_size(size):
    try:
        h, w = (int(s) for s in size)
        ok = all(float(s) == int(s) for s in size)
    except (TypeError, ValueError):
        ok = False
    if not ok or h < 1 or w < 1:
        raise ValueError(f"size must be two positive integers (H, W), got {size!r}")
    return h, w
