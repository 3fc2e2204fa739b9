"""Boundary metrics: Boundary IoU, boundary F-score, trimap accuracy and mIoU.

They measure what the CRF changes: the pixels near edges.
"""
from __future__ import annotations

import math

import numpy as np

from .. import _validation
from . import scores
from .confusion import _check_num_classes, _normalise_ignore, confusion_matrix, prepare_labels


def _distance_transform(mask):
    """Euclidean distance from each True pixel to the nearest False one.

    scipy.ndimage is imported here, on first use: at module level it was
    three quarters of ``import segpost``.
    """
    from scipy import ndimage

    return ndimage.distance_transform_edt(mask)

__all__ = ["boundary_iou", "boundary_fscore", "trimap_metrics", "label_boundaries"]


def _as_2d_labels(pred, target):
    pred, target = prepare_labels(pred, target)
    if _validation.is_torch_tensor(pred):
        pred, target = pred.detach().cpu().numpy(), target.detach().cpu().numpy()
    pred, target = np.asarray(pred), np.asarray(target)
    if target.ndim != 2:
        raise ValueError(f"boundary metrics take one (H, W) label map at a time, got shape {target.shape}")
    if target.size == 0:
        raise ValueError("boundary metrics need a non-empty label map")
    return pred.astype(np.int64), target.astype(np.int64)


def _ignored(target, ignore):
    mask = np.zeros(target.shape, bool)
    for v in ignore:
        mask |= target == v
    return mask


def _inner_band(mask, width):
    """Pixels of `mask` within `width` pixels (Euclidean) of its contour; the image border counts as contour."""
    if not mask.any():
        return mask
    padded = np.pad(mask, 1, constant_values=False)
    inside = _distance_transform(padded)[1:-1, 1:-1]
    return mask & (inside <= width)


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
    if width is not None:
        if isinstance(width, bool) or not isinstance(width, (int, np.integer, float)) or width < 1:
            raise ValueError(f"width must be >= 1 pixel, got {width!r}")
        return float(width)
    if not 0 < dilation_ratio <= 1:
        raise ValueError(f"dilation_ratio must be in (0, 1], got {dilation_ratio!r}")
    return float(max(1, round(dilation_ratio * math.hypot(*shape))))


def boundary_iou(pred, target, num_classes, *, dilation_ratio=0.02, width=None, ignore_index=None,
                 return_counts=False):
    """Boundary IoU (Cheng et al. 2021) for multi-class label maps.

    For each class, the pixels of the target mask and of the predicted mask
    that lie within ``d`` pixels of their own contour (the image border counts
    as contour, as in the reference code) form two bands; the class's
    Boundary IoU is |G_d & P_d| / |G_d | P_d|. ``d = dilation_ratio x image
    diagonal`` (default 2%, at least 1 pixel) unless ``width`` gives it in
    pixels. Ignored target pixels are left out of both bands.

    Returns
    -------
    per_class : (K,) float64
        NaN for classes in neither map.
    mean : float
        Mean over classes present in either map.
    With ``return_counts=True`` also (intersection, union) (K,) int64 arrays,
    to accumulate over a dataset.

    References
    ----------
    .. [1] B. Cheng, R. Girshick, P. Dollár, A. C. Berg, A. Kirillov. "Boundary IoU:
       Improving Object-Centric Image Segmentation Evaluation". CVPR 2021.

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
    pred, target = _as_2d_labels(pred, target)
    d = _band_width(target.shape, dilation_ratio, width)
    keep = ~_ignored(target, _normalise_ignore(ignore_index))
    inter = np.zeros(k, np.int64)
    union = np.zeros(k, np.int64)
    for c in range(k):
        g, p = (target == c) & keep, (pred == c) & keep
        if not (g.any() or p.any()):
            continue
        gb, pb = _inner_band(target == c, d) & keep, _inner_band(pred == c, d) & keep
        inter[c] = np.count_nonzero(gb & pb)
        union[c] = np.count_nonzero(gb | pb)
    per_class = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    mean = scores.mean_score(per_class)
    return (per_class, mean, inter, union) if return_counts else (per_class, mean)


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
