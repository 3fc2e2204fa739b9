"""Boundary metrics: Boundary IoU, boundary F-score, trimap accuracy and mIoU.

They measure what the CRF changes: the pixels near edges.
"""
from __future__ import annotations

import math

import numpy as np

from .. import _validation
from . import scores
from .confusion import _check_num_classes, _normalise_ignore, confusion_matrix, prepare_labels

__all__ = ["boundary_iou", "boundary_fscore", "trimap_metrics", "label_boundaries"]


def _distance_transform(mask):
    """Euclidean distance from each True pixel to the nearest False one.

    scipy.ndimage is imported here, on first use: at module level it was
    three quarters of ``import segpost``.
    """
    from scipy import ndimage

    return ndimage.distance_transform_edt(mask)


def _as_2d_labels(pred, target, *, native=False):
    """(H, W) numpy label maps: int64 copies, or with ``native`` the validated arrays in their own integer dtypes."""
    pred, target = prepare_labels(pred, target)
    if _validation.is_torch_tensor(pred):
        pred, target = pred.detach().cpu().numpy(), target.detach().cpu().numpy()
    pred, target = np.asarray(pred), np.asarray(target)
    if target.ndim != 2:
        raise ValueError(f"boundary metrics take one (H, W) label map at a time, got shape {target.shape}")
    if target.size == 0:
        raise ValueError("boundary metrics need a non-empty label map")
    if native:  # boolean maps as 0/1 bytes, any other integer dtype as it is
        return tuple(a.view(np.uint8) if a.dtype == np.bool_ else a for a in (pred, target))
    return pred.astype(np.int64), target.astype(np.int64)


def _ignored(target, ignore):
    mask = np.zeros(target.shape, bool)
    for v in ignore:
        mask |= target == v
    return mask


def label_boundaries(labels):
    """Boolean map of pixels whose 4-neighbourhood holds another label."""
    labels = np.asarray(labels)
    edge = np.zeros(labels.shape, bool)
    diff_y = labels[1:, :] != labels[:-1, :]
    diff_x = labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= diff_y
    edge[:-1, :] |= diff_y
    edge[:, 1:] |= diff_x
    edge[:, :-1] |= diff_x
    return edge


def _band_width(shape, dilation_ratio, width):
    """The band's width d in pixels: ``width``, or round(dilation_ratio x diagonal) (at least 1), as the reference code."""
    if width is not None:
        if isinstance(width, bool) or not isinstance(width, (int, np.integer, float)) or width < 1:
            raise ValueError(f"width must be >= 1 pixel, got {width!r}")
        return float(width)
    if not 0 < dilation_ratio <= 1:
        raise ValueError(f"dilation_ratio must be in (0, 1], got {dilation_ratio!r}")
    return float(max(1, round(dilation_ratio * math.hypot(*shape))))


def _square_band_width(shape, dilation_ratio, width):
    d = _band_width(shape, dilation_ratio, width)
    if d != int(d):
        raise ValueError(f"width must be a whole number of pixels (the band is an erosion), got {width!r}")
    return int(d)


def _band_labels(labels, d, num_classes):
    """Each pixel's class if it lies in that class's band, else num_classes (labels outside [0, K) are in no class).

    In the smallest unsigned dtype that holds num_classes + 1 (the value for
    ignored pixels): the confusion-matrix kernel is fastest on narrow labels.
    """
    from ._kernels import boundary_band

    dtype = np.uint8 if num_classes + 1 <= 255 else (np.uint16 if num_classes + 1 <= 65535 else np.int64)
    return boundary_band(labels, d, num_classes, np.empty(labels.shape, dtype))


def boundary_iou(pred, target, num_classes, *, dilation_ratio=0.02, width=None, ignore_index=None,
                 return_counts=False):
    """Boundary IoU (Cheng et al. 2021) for multi-class label maps, as the official code computes it.

    For each class c, the band of a mask is the official ``mask_to_boundary``:
    ``mask - erode(pad(mask, 1, value 0), 3x3 square, d iterations)``,
    cropped back: the mask's pixels within ``d`` pixels (a square, Chebyshev
    distance) of its contour, the image border counting as contour. The
    class's Boundary IoU is |G_d & P_d| / |G_d | P_d| over the target's and
    the prediction's bands. ``d = round(dilation_ratio x image diagonal)``
    (default 2%, at least 1 pixel) unless ``width`` gives it in pixels.
    Ignored target pixels are left out of both bands (the band itself is
    computed with ignored pixels as another label, so a class's boundary
    along an ignored region is part of its band). Labels outside
    [0, num_classes) belong to no class.

    All classes' bands come from one pass over each map (see
    ``_kernels.boundary_band``) and one confusion matrix of band labels.

    Parameters
    ----------
    pred, target : (H, W) integer arrays or tensors
    num_classes : int
    dilation_ratio : float, keyword-only
        The band's width as a fraction of the image diagonal, in (0, 1].
    width : int, keyword-only, optional
        The band's width in pixels instead (>= 1).
    ignore_index : int or sequence of int, keyword-only, optional
    return_counts : bool, keyword-only
        Also return the (K,) int64 intersections and unions, to accumulate over a dataset.

    Returns
    -------
    per_class : (K,) float64
        NaN for classes in neither band.
    mean : float
        Mean over classes with a band.
    With ``return_counts=True`` also (intersection, union) (K,) int64 arrays.

    References
    ----------
    .. [1] B. Cheng, R. Girshick, P. Dollár, A. C. Berg, A. Kirillov. "Boundary IoU:
       Improving Object-Centric Image Segmentation Evaluation". CVPR 2021.
       Reference code: github.com/bowenc0221/boundary-iou-api,
       ``boundary_iou/utils/boundary_utils.py``.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import boundary_iou
    >>> target = np.zeros((64, 64), int); target[16:48, 16:48] = 1
    >>> per_class, mean = boundary_iou(target, target, 2)
    >>> mean
    1.0
    >>> shifted = np.zeros_like(target); shifted[16:48, 18:50] = 1   # 2 pixels to the right
    >>> print(np.round(boundary_iou(shifted, target, 2)[0], 2))
    [0.7  0.33]
    """
    k = _check_num_classes(num_classes)
    pred, target = _as_2d_labels(pred, target, native=True)
    d = _square_band_width(target.shape, dilation_ratio, width)
    target_band = _band_labels(target, d, k)
    pred_band = _band_labels(pred, d, k)
    # Ignored pixels leave both bands: as an ignored target value past "no class".
    target_band[_ignored(target, _normalise_ignore(ignore_index))] = k + 1
    cm = np.asarray(confusion_matrix(pred_band, target_band, k + 1, ignore_index=k + 1), np.int64)
    inter = np.diagonal(cm)[:k].copy()
    union = cm.sum(axis=1)[:k] + cm.sum(axis=0)[:k] - inter
    per_class = band_iou(inter, union)
    mean = scores.mean_score(per_class)
    return (per_class, mean, inter, union) if return_counts else (per_class, mean)


def band_iou(intersection, union):
    """Per-class Boundary IoU from band counts (one image's or summed over a dataset): NaN where no band."""
    return scores._ratio(intersection, union, union > 0, "nan")


def boundary_fscore(pred, target, *, tolerance=2, ignore_index=None):
    """Boundary F-score of label maps: precision and recall of boundary pixels matched within ``tolerance`` pixels.

    Boundaries are pixels whose 4-neighbourhood holds another label. A
    predicted boundary pixel is correct if a target boundary pixel lies
    within ``tolerance`` (Euclidean) of it, and vice versa for recall. Pixels
    whose target is ignored take no part.

    Returns
    -------
    (fscore, precision, recall) : floats; 1.0 each when neither map has a boundary.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import boundary_fscore
    >>> target = np.zeros((32, 32), int); target[:, 16:] = 1
    >>> pred = np.zeros((32, 32), int); pred[:, 17:] = 1    # the edge one pixel off
    >>> boundary_fscore(pred, target, tolerance=2)
    (1.0, 1.0, 1.0)
    >>> boundary_fscore(pred, target, tolerance=0)
    (0.5, 0.5, 0.5)
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, np.integer, float)) or tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance!r}")
    pred, target = _as_2d_labels(pred, target)
    keep = ~_ignored(target, _normalise_ignore(ignore_index))
    target_for_edges = np.where(keep, target, -1)
    gb = label_boundaries(target_for_edges) & keep
    pb = label_boundaries(np.where(keep, pred, -1)) & keep
    if not gb.any() and not pb.any():
        return 1.0, 1.0, 1.0
    if not gb.any() or not pb.any():
        return 0.0, 0.0, 0.0
    dist_to_g = _distance_transform(~gb)
    dist_to_p = _distance_transform(~pb)
    prec = float(np.count_nonzero(pb & (dist_to_g <= tolerance)) / np.count_nonzero(pb))
    rec = float(np.count_nonzero(gb & (dist_to_p <= tolerance)) / np.count_nonzero(gb))
    f = 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)
    return f, prec, rec


def trimap_metrics(pred, target, num_classes, *, width=5, ignore_index=None):
    """Accuracy and mIoU within a band of ``width`` pixels around the target's label boundaries.

    The "trimap" evaluation of the DenseCRF and DeepLab papers: it isolates
    the pixels near edges, where a CRF helps.

    Returns
    -------
    dict with ``accuracy``, ``miou`` and ``num_pixels`` (pixels in the band, not ignored).
    """
    k = _check_num_classes(num_classes)
    pred, target = _as_2d_labels(pred, target)
    band_width = _band_width(target.shape, 0.02, width)
    ignore = _normalise_ignore(ignore_index)
    keep = ~_ignored(target, ignore)
    edges = label_boundaries(np.where(keep, target, -1)) & keep
    if not edges.any():
        return {"accuracy": float("nan"), "miou": float("nan"), "num_pixels": 0}
    band = (_distance_transform(~edges) <= band_width) & keep
    cm = confusion_matrix(pred[band], target[band], k)
    return {"accuracy": scores.pixel_accuracy(cm), "miou": scores.mean_score(scores.iou(cm)),
            "num_pixels": int(band.sum())}
