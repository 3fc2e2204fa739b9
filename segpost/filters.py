"""Edge-preserving image filters built on the permutohedral lattice."""
from __future__ import annotations

import numpy as np

from ._validation import FLOAT32_MAX, check_bandwidth, check_finite, like_input
from ._validation import channels_last as _channels_last
from ._memory import check_working_set
from .lattice import MAX_LATTICE_DIM, PermutohedralLattice, lattice_bytes

__all__ = ["bilateral_filter"]


def bilateral_filter(image, sigma_spatial, sigma_color, *, channel_axis="auto"):
    """Edge-preserving bilateral filter of a gray or multi-channel image.

    Each output pixel is the average of all pixels weighted by
    ``exp(-|p - q|^2 / (2 sigma_spatial^2) - |I_p - I_q|^2 / (2 sigma_color^2))``,
    computed on a permutohedral lattice in O(H W) time whatever the sigmas.

    Parameters
    ----------
    image : (H, W), numpy (H, W, C) or torch (C, H, W)
        Any real dtype; segpost's layout rule (numpy channels-last, torch
        channels-first), or ``channel_axis`` for other layouts.
    sigma_spatial : float
        Spatial bandwidth in pixels, > 0.
    sigma_color : float
        Range bandwidth in the image's own intensity units (e.g. 0..255 for
        uint8, 0..1 for float images), > 0.
    channel_axis : "auto", int or None, keyword-only
        Axis of the channels of a 3-D image; "auto" is -1 for numpy and 0 for
        torch. ``None``: a 2-D image with no channel axis.

    Returns
    -------
    out : ndarray or torch.Tensor
        float32, same shape and layout as ``image``, in the image's units.

    Raises
    ------
    TypeError
        If ``image`` is not a real numeric array or a sigma is not a number.
    ValueError
        If ``image`` is empty, not 2-D or 3-D, contains NaN or infinity, has
        more than 62 channels, or a sigma is not positive and finite.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost import bilateral_filter
    >>> rng = np.random.default_rng(0)
    >>> step = np.zeros((32, 32), np.float32)
    >>> step[:, 16:] = 1.0
    >>> noisy = step + rng.normal(scale=0.05, size=step.shape).astype(np.float32)
    >>> smooth = bilateral_filter(noisy, sigma_spatial=4, sigma_color=0.2)
    >>> bool(np.abs(smooth - step).mean() < np.abs(noisy - step).mean())
    True
    >>> bool(abs(smooth[:, 15].mean()) < 0.05 and abs(smooth[:, 16].mean() - 1) < 0.05)
    True
    """
    sigma_spatial = check_bandwidth(sigma_spatial, "sigma_spatial")
    sigma_color = check_bandwidth(sigma_color, "sigma_color")
    channels_last, was_torch, axis = _channels_last(image, channel_axis=channel_axis)
    shape = tuple(np.shape(image))
    if axis is None:
        restore = lambda out: out.reshape(shape)  # noqa: E731
    else:
        restore = lambda out: np.moveaxis(out, -1, axis)  # noqa: E731
    h, w, c = channels_last.shape
    if h == 0 or w == 0 or c == 0:
        raise ValueError(f"image must not be empty, got shape {shape}")
    if c + 2 > MAX_LATTICE_DIM:
        raise ValueError(f"image has {c} channels; at most {MAX_LATTICE_DIM - 2} are supported")
    check_finite(channels_last, "image", bound=FLOAT32_MAX)
    check_working_set(lattice_bytes(h * w, 2 + c, c) + 8 * h * w * c, f"bilateral_filter on a {h}x{w} image with "
                      f"{c} channels", "filter a crop at a time")
    colors = channels_last.reshape(h * w, c).astype(np.float32)

    features = np.empty((h * w, 2 + c), np.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    features[:, 0] = yy.ravel() / sigma_spatial
    features[:, 1] = xx.ravel() / sigma_spatial
    features[:, 2:] = colors / sigma_color
    out = PermutohedralLattice(features).filter(colors, normalize=True)
    return like_input(np.ascontiguousarray(restore(out.reshape(h, w, c))), was_torch)
