"""Boundary metrics: Boundary IoU, boundary F-score, trimap accuracy and mIoU.

They measure what the CRF changes: the pixels near edges.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .. import _validation
from . import scores
from .confusion import _check_num_classes, _normalise_ignore, confusion_matrix, prepare_labels

__all__ = [
    "BoundaryFScoreResult", "BoundaryIoUResult", "TrimapResult", "boundary_fscore", "boundary_iou", "label_boundaries",
    "trimap_metrics",
]


class _BoundaryResult:
    """What the three boundary results share: named fields, ``as_dict()`` and a one-line repr."""

    def as_dict(self):
        """The fields as a plain dict (arrays stay arrays)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __repr__(self):
        def show(value):
            if isinstance(value, np.ndarray):
                return np.array2string(value, precision=4, separator=", ", threshold=8).replace("\n", "")
            return f"{value:.4f}" if isinstance(value, float) else repr(value)

        fields = ", ".join(f"{f.name}={show(getattr(self, f.name))}" for f in dataclasses.fields(self))
        return f"{type(self).__name__}({fields})"


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class BoundaryIoUResult(_BoundaryResult):
    """What ``boundary_iou`` returns.

    Attributes
    ----------
    iou : (K,) float64
        Per-class Boundary IoU; NaN for classes in neither band.
    miou : float
        Mean over classes with a band.
    intersection, union : (K,) int64
        The band counts behind ``iou``: sum them over images for a
        dataset-level Boundary IoU (``SegMetrics(boundary=True)`` does).
    width : int
        The band's width d in pixels.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import boundary_iou
    >>> target = np.zeros((16, 16), int); target[4:12, 4:12] = 1
    >>> result = boundary_iou(target, target, 2, width=1)
    >>> result.miou, result.as_dict()["width"]
    (1.0, 1)
    """

    iou: np.ndarray
    miou: float
    intersection: np.ndarray
    union: np.ndarray
    width: int


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class BoundaryFScoreResult(_BoundaryResult):
    """What ``boundary_fscore`` returns.

    Attributes
    ----------
    fscore, precision, recall : float
        1.0 each when neither map has a boundary, 0.0 each when only one has.
    pred_boundary, target_boundary : int
        Boundary pixels in each map (not ignored).
    pred_matched, target_matched : int
        Those within ``tolerance`` of the other map's boundary:
        precision = pred_matched / pred_boundary, recall = target_matched / target_boundary.
    tolerance : float
        The matching distance in pixels.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import boundary_fscore
    >>> target = np.zeros((8, 8), int); target[:, 4:] = 1
    >>> result = boundary_fscore(target, target)
    >>> result.fscore, result.pred_boundary
    (1.0, 16)
    """

    fscore: float
    precision: float
    recall: float
    pred_boundary: int
    target_boundary: int
    pred_matched: int
    target_matched: int
    tolerance: float


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class TrimapResult(_BoundaryResult):
    """What ``trimap_metrics`` returns.

    Attributes
    ----------
    accuracy, miou : float
        Pixel accuracy and mIoU inside the band; NaN when the target has no boundary.
    num_pixels : int
        Pixels in the band (not ignored).
    confusion : (K, K) int64
        The band's confusion matrix (rows = target, columns = prediction).
    width : float
        The band's half-width in pixels.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import trimap_metrics
    >>> target = np.zeros((8, 8), int); target[:, 4:] = 1
    >>> result = trimap_metrics(target, target, 2, width=1)
    >>> result.accuracy, result.num_pixels
    (1.0, 32)
    """

    accuracy: float
    miou: float
    num_pixels: int
    confusion: np.ndarray
    width: float


def _distance_transform(mask):
    """Euclidean distance from each True pixel to the nearest False one.

    scipy.ndimage is imported here, on first use: at module level it was
    three quarters of ``import segpost``.
    """
    from scipy import ndimage

    return ndimage.distance_transform_edt(mask)


def _as_2d_labels(pred, target, *, native=False, volumes=False):
    """(H, W) numpy label maps (or (D, H, W) with ``volumes``): int64 copies, or with ``native`` the validated
    arrays in their own integer dtypes."""
    pred, target = prepare_labels(pred, target)
    if _validation.is_torch_tensor(pred):
        pred, target = pred.detach().cpu().numpy(), target.detach().cpu().numpy()
    pred, target = np.asarray(pred), np.asarray(target)
    if volumes and target.ndim not in (2, 3):
        raise ValueError(f"boundary_iou takes one (H, W) label map or one (D, H, W) volume at a time, "
                         f"got shape {target.shape}")
    if not volumes and target.ndim != 2:
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
    """Boolean map of pixels whose 4-neighbourhood holds another label (both sides of every edge).

    Parameters
    ----------
    labels : (H, W) array_like

    Returns
    -------
    (H, W) bool

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import label_boundaries
    >>> label_boundaries(np.array([[0, 0, 1, 1]])).astype(int)
    array([[0, 1, 1, 0]])
    """
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
    if labels.ndim != 2:
        return _band_labels_nd(labels, d, num_classes, dtype)
    return boundary_band(labels, d, num_classes, np.empty(labels.shape, dtype))


def _band_labels_nd(labels, d, num_classes, dtype):
    """``_band_labels`` on any grid (volumes): a voxel is in its class's band when it lies within ``d`` voxels
    of the border or the (2d+1)-cube around it holds another label (its maximum differs from its minimum),
    the same rule as the 2-D kernel (``_kernels.boundary_band``) with a cube for the square."""
    from scipy import ndimage

    size = 2 * d + 1
    band = ndimage.maximum_filter(labels, size=size, mode="nearest") != ndimage.minimum_filter(
        labels, size=size, mode="nearest")
    for axis, n in enumerate(labels.shape):  # within d of the border: the padding's zero is in the cube
        edge = [slice(None)] * labels.ndim
        edge[axis] = slice(0, min(d, n))
        band[tuple(edge)] = True
        edge[axis] = slice(max(0, n - d), n)
        band[tuple(edge)] = True
    in_class = (labels >= 0) & (labels < num_classes)
    return np.where(band & in_class, labels, num_classes).astype(dtype)


def boundary_iou(pred, target, num_classes, *, dilation_ratio=0.02, width=None, ignore_index=None):
    """Boundary IoU (Cheng et al. 2021 [Cheng2021]_) for multi-class label maps, as the official code computes it.

    For each class c, the band of a mask is the official ``mask_to_boundary``:
    ``mask - erode(pad(mask, 1, value 0), 3x3 square, d iterations)``,
    cropped back: the mask's pixels within ``d`` pixels (a square, Chebyshev
    distance) of its contour, the image border counting as contour. The
    class's Boundary IoU is ``|G_d & P_d| / |G_d | P_d|`` over the target's and
    the prediction's bands. ``d = round(dilation_ratio x image diagonal)``
    (default 2%, at least 1 pixel) unless ``width`` gives it in pixels.
    A (D, H, W) volume is one case: the same definition with a cube for the
    square, ``d`` from the volume's diagonal, in voxels along every axis (the
    voxel spacing plays no part).
    Ignored target pixels are left out of both bands (the band itself is
    computed with ignored pixels as another label, so a class's boundary
    along an ignored region is part of its band). Labels outside
    [0, num_classes) belong to no class.

    All classes' bands come from one pass over each map (see
    ``_kernels.boundary_band``) and one confusion matrix of band labels.

    Parameters
    ----------
    pred, target : (H, W) or (D, H, W) integer arrays or tensors
    num_classes : int
    dilation_ratio : float, keyword-only
        The band's width as a fraction of the image (volume) diagonal, in (0, 1].
    width : int, keyword-only, optional
        The band's width in pixels instead (>= 1).
    ignore_index : int or sequence of int, keyword-only, optional

    Returns
    -------
    BoundaryIoUResult
        ``.iou`` per class (NaN for classes in neither band), ``.miou``,
        and the band counts ``.intersection`` and ``.union`` to sum over a
        dataset.

    References
    ----------
    .. [Cheng2021] B. Cheng, R. Girshick, P. Dollár, A. C. Berg, A. Kirillov. "Boundary IoU:
       Improving Object-Centric Image Segmentation Evaluation". CVPR 2021.
       Reference code: github.com/bowenc0221/boundary-iou-api,
       ``boundary_iou/utils/boundary_utils.py``.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import boundary_iou
    >>> target = np.zeros((64, 64), int); target[16:48, 16:48] = 1
    >>> boundary_iou(target, target, 2).miou
    1.0
    >>> shifted = np.zeros_like(target); shifted[16:48, 18:50] = 1   # 2 pixels to the right
    >>> result = boundary_iou(shifted, target, 2)
    >>> print(np.round(result.iou, 2), result.width)
    [0.7  0.33] 2
    >>> result.intersection, result.union
    (array([632, 120]), array([904, 360]))
    """
    k = _check_num_classes(num_classes)
    pred, target = _as_2d_labels(pred, target, native=True, volumes=True)
    d = _square_band_width(target.shape, dilation_ratio, width)
    target_band = _band_labels(target, d, k)
    pred_band = _band_labels(pred, d, k)
    # Ignored pixels leave both bands: as an ignored target value past "no class".
    target_band[_ignored(target, _normalise_ignore(ignore_index))] = k + 1
    cm = np.asarray(confusion_matrix(pred_band, target_band, k + 1, ignore_index=k + 1), np.int64)
    inter = np.diagonal(cm)[:k].copy()
    union = cm.sum(axis=1)[:k] + cm.sum(axis=0)[:k] - inter
    per_class = band_iou(inter, union)
    return BoundaryIoUResult(per_class, scores.mean_score(per_class), inter, union, d)


def band_iou(intersection, union):
    """Per-class Boundary IoU from band counts (one image's or summed over a dataset): NaN where no band."""
    return scores._ratio(intersection, union, union > 0, "nan")


def boundary_fscore(pred, target, *, tolerance=2, ignore_index=None):
    """Boundary F-score of label maps: precision and recall of boundary pixels matched within ``tolerance`` pixels.

    Boundaries are pixels whose 4-neighbourhood holds another label. A
    predicted boundary pixel is correct if a target boundary pixel lies
    within ``tolerance`` (Euclidean) of it, and vice versa for recall. Pixels
    whose target is ignored take no part.

    Parameters
    ----------
    pred, target : (H, W) integer arrays or tensors
    tolerance : float, keyword-only
        The matching distance in pixels, >= 0.
    ignore_index : int or sequence of int, keyword-only, optional

    Raises
    ------
    ValueError
        On shapes that differ or are not (H, W), empty maps, a negative tolerance.

    Returns
    -------
    BoundaryFScoreResult
        ``.fscore``, ``.precision``, ``.recall`` (1.0 each when neither map
        has a boundary) and the pixel counts behind them.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import boundary_fscore
    >>> target = np.zeros((32, 32), int); target[:, 16:] = 1
    >>> pred = np.zeros((32, 32), int); pred[:, 17:] = 1    # the edge one pixel off
    >>> boundary_fscore(pred, target, tolerance=2).fscore
    1.0
    >>> result = boundary_fscore(pred, target, tolerance=0)
    >>> result.fscore, result.pred_matched, result.pred_boundary
    (0.5, 32, 64)
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, np.integer, float)) or tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance!r}")
    pred, target = _as_2d_labels(pred, target)
    keep = ~_ignored(target, _normalise_ignore(ignore_index))
    target_for_edges = np.where(keep, target, -1)
    gb = label_boundaries(target_for_edges) & keep
    pb = label_boundaries(np.where(keep, pred, -1)) & keep
    num_pred, num_target = int(np.count_nonzero(pb)), int(np.count_nonzero(gb))
    counts = dict(pred_boundary=num_pred, target_boundary=num_target, tolerance=float(tolerance))
    if num_pred == 0 or num_target == 0:
        both_empty = float(num_pred == num_target)  # no boundary in either map is a perfect match
        return BoundaryFScoreResult(both_empty, both_empty, both_empty, pred_matched=0, target_matched=0, **counts)
    pred_matched = int(np.count_nonzero(pb & (_distance_transform(~gb) <= tolerance)))
    target_matched = int(np.count_nonzero(gb & (_distance_transform(~pb) <= tolerance)))
    prec, rec = pred_matched / num_pred, target_matched / num_target
    f = 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)
    return BoundaryFScoreResult(f, prec, rec, pred_matched=pred_matched, target_matched=target_matched, **counts)


def trimap_metrics(pred, target, num_classes, *, width=5, ignore_index=None):
    """Accuracy and mIoU within a band of ``width`` pixels around the target's label boundaries.

    The "trimap" evaluation of the DenseCRF and DeepLab papers: it isolates
    the pixels near edges, where a CRF helps.

    Parameters
    ----------
    pred, target : (H, W) integer arrays or tensors
    num_classes : int
    width : float, keyword-only
        The band's half-width in pixels (Euclidean), >= 1.
    ignore_index : int or sequence of int, keyword-only, optional

    Raises
    ------
    ValueError
        On shapes that differ or are not (H, W), empty maps, a width below 1.

    Returns
    -------
    TrimapResult
        ``.accuracy``, ``.miou``, ``.num_pixels`` (pixels in the band, not
        ignored) and the band's ``.confusion`` matrix.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import trimap_metrics
    >>> target = np.zeros((32, 32), int); target[:, 16:] = 1
    >>> pred = np.zeros((32, 32), int); pred[:, 17:] = 1    # column 16 wrong
    >>> result = trimap_metrics(pred, target, 2, width=3)
    >>> result.num_pixels, result.accuracy
    (256, 0.875)
    """
    k = _check_num_classes(num_classes)
    pred, target = _as_2d_labels(pred, target)
    band_width = _band_width(target.shape, 0.02, width)
    ignore = _normalise_ignore(ignore_index)
    keep = ~_ignored(target, ignore)
    edges = label_boundaries(np.where(keep, target, -1)) & keep
    if not edges.any():
        return TrimapResult(float("nan"), float("nan"), 0, np.zeros((k, k), np.int64), band_width)
    band = (_distance_transform(~edges) <= band_width) & keep
    cm = np.asarray(confusion_matrix(pred[band], target[band], k), np.int64)
    return TrimapResult(scores.pixel_accuracy(cm), scores.mean_score(scores.iou(cm)), int(band.sum()), cm, band_width)
