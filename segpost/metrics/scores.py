"""Scores from a confusion matrix (rows = target, columns = prediction).

Every function takes a (K, K) confusion matrix (numpy or torch, any integer
or float dtype) and returns numpy float64 values.

Conventions
-----------
- A class absent from both the target and the prediction has an undefined
  IoU/Dice/precision/recall: it gets the value of ``absent`` (``"nan"``,
  default, which also leaves it out of every mean; or 0 or 1, which count).
- A class only predicted (absent from the target) has IoU 0 and counts.
- Precision of a class never predicted, and recall of a class not in the
  target (but predicted), are 0.
- ``exclude_classes`` (e.g. background) leaves classes out of the means, not
  out of the per-class arrays.
"""
from __future__ import annotations

import numpy as np

from .._validation import is_torch_tensor

__all__ = [
    "per_class_counts", "iou", "dice", "precision", "recall", "pixel_accuracy", "mean_accuracy",
    "fw_iou", "mean_score", "micro_iou", "valid_classes",
]


def _matrix(cm) -> np.ndarray:
    arr = cm.detach().cpu().numpy() if is_torch_tensor(cm) else np.asarray(cm)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0:
        raise ValueError(f"a confusion matrix must be square (K, K), got shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"a confusion matrix must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def per_class_counts(cm):
    """(tp, fp, fn, support) per class; support is the number of target pixels.

    Parameters
    ----------
    cm : (K, K) array_like or torch.Tensor
        Confusion matrix, rows = target, columns = prediction (any numeric dtype).

    Returns
    -------
    tp, fp, fn, support : (K,) float64

    Raises
    ------
    ValueError
        If ``cm`` is not square (K, K) with K >= 1.
    TypeError
        If ``cm`` is not numeric.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import per_class_counts
    >>> cm = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])   # rows = target; class 2 absent
    >>> per_class_counts(cm)[0], per_class_counts(cm)[3]
    (array([3., 2., 0.]), array([4., 2., 0.]))
    """
    m = _matrix(cm)
    tp = np.diag(m)
    support = m.sum(axis=1)
    predicted = m.sum(axis=0)
    return tp, predicted - tp, support - tp, support


def valid_classes(cm):
    """Classes present in the target or the prediction.

    Parameters
    ----------
    cm : (K, K) array_like or torch.Tensor
        Confusion matrix, rows = target, columns = prediction (any numeric dtype).

    Returns
    -------
    (K,) bool

    Raises
    ------
    ValueError
        If ``cm`` is not square (K, K) with K >= 1.
    TypeError
        If ``cm`` is not numeric.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import valid_classes
    >>> cm = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])   # rows = target; class 2 absent
    >>> valid_classes(cm)
    array([ True,  True, False])
    """
    m = _matrix(cm)
    return (m.sum(axis=0) + m.sum(axis=1)) > 0


def _absent_value(absent):
    if isinstance(absent, str) and absent == "nan":
        return np.nan
    if absent in (0, 1) and not isinstance(absent, bool):
        return float(absent)
    raise ValueError(f"absent must be 'nan', 0 or 1, got {absent!r}")


def _ratio(num, den, present, absent, zero_division=0.0):
    fill = _absent_value(absent)
    out = np.full(num.shape, fill)
    defined = den > 0
    out[defined] = num[defined] / den[defined]
    out[present & ~defined] = zero_division
    return out


def iou(cm, *, absent="nan"):
    """Per-class intersection over union TP / (TP + FP + FN).

    Parameters
    ----------
    cm : (K, K) array_like or torch.Tensor
        Confusion matrix, rows = target, columns = prediction (any numeric dtype).
    absent : {"nan", 0, 1}, keyword-only
        The score of a class in neither target nor prediction.

    Returns
    -------
    (K,) float64
        ``absent`` for classes in neither target nor prediction.

    Raises
    ------
    ValueError
        If ``cm`` is not square (K, K) with K >= 1, or ``absent`` is not one of its values.
    TypeError
        If ``cm`` is not numeric.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import iou
    >>> cm = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])   # rows = target; class 2 absent
    >>> iou(cm)
    array([0.75      , 0.66666667,        nan])
    """
    tp, fp, fn, _ = per_class_counts(cm)
    return _ratio(tp, tp + fp + fn, valid_classes(cm), absent)


def dice(cm, *, absent="nan"):
    """Per-class Dice (F1): 2 TP / (2 TP + FP + FN).

    Parameters
    ----------
    cm : (K, K) array_like or torch.Tensor
        Confusion matrix, rows = target, columns = prediction (any numeric dtype).
    absent : {"nan", 0, 1}, keyword-only
        The score of a class in neither target nor prediction.

    Returns
    -------
    (K,) float64
        ``absent`` for classes in neither target nor prediction.

    Raises
    ------
    ValueError
        If ``cm`` is not square (K, K) with K >= 1, or ``absent`` is not one of its values.
    TypeError
        If ``cm`` is not numeric.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import dice
    >>> cm = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])   # rows = target; class 2 absent
    >>> dice(cm)
    array([0.85714286, 0.8       ,        nan])
    """
    tp, fp, fn, _ = per_class_counts(cm)
    return _ratio(2 * tp, 2 * tp + fp + fn, valid_classes(cm), absent)


def precision(cm, *, absent="nan"):
    """Per-class precision TP / (TP + FP); 0 for a class in the target that is never predicted.

    Parameters
    ----------
    cm : (K, K) array_like or torch.Tensor
        Confusion matrix, rows = target, columns = prediction (any numeric dtype).
    absent : {"nan", 0, 1}, keyword-only
        The score of a class in neither target nor prediction.

    Returns
    -------
    (K,) float64

    Raises
    ------
    ValueError
        If ``cm`` is not square (K, K) with K >= 1, or ``absent`` is not one of its values.
    TypeError
        If ``cm`` is not numeric.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import precision
    >>> cm = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])   # rows = target; class 2 absent
    >>> precision(cm)
    array([1.        , 0.66666667,        nan])
    """
    tp, fp, _, _ = per_class_counts(cm)
    return _ratio(tp, tp + fp, valid_classes(cm), absent)


def recall(cm, *, absent="nan"):
    """Per-class recall (class accuracy) TP / (TP + FN); 0 for a predicted class absent from the target.

    Parameters
    ----------
    cm : (K, K) array_like or torch.Tensor
        Confusion matrix, rows = target, columns = prediction (any numeric dtype).
    absent : {"nan", 0, 1}, keyword-only
        The score of a class in neither target nor prediction.

    Returns
    -------
    (K,) float64

    Raises
    ------
    ValueError
        If ``cm`` is not square (K, K) with K >= 1, or ``absent`` is not one of its values.
    TypeError
        If ``cm`` is not numeric.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import recall
    >>> cm = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])   # rows = target; class 2 absent
    >>> recall(cm)
    array([0.75, 1.  ,  nan])
    """
    tp, _, fn, _ = per_class_counts(cm)
    return _ratio(tp, tp + fn, valid_classes(cm), absent)


def pixel_accuracy(cm) -> float:
    """Fraction of counted pixels labelled correctly: trace / total.

    Parameters
    ----------
    cm : (K, K) array_like or torch.Tensor
        Confusion matrix, rows = target, columns = prediction (any numeric dtype).

    Returns
    -------
    float
        NaN if nothing was counted.

    Raises
    ------
    ValueError
        If ``cm`` is not square (K, K) with K >= 1.
    TypeError
        If ``cm`` is not numeric.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import pixel_accuracy
    >>> cm = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])   # rows = target; class 2 absent
    >>> pixel_accuracy(cm)
    0.8333333333333334
    """
    m = _matrix(cm)
    total = m.sum()
    return float(np.trace(m) / total) if total > 0 else float("nan")


def mean_score(per_class, *, weights=None, exclude_classes=()):
    """Mean of a per-class score over the classes where it is defined (not NaN), minus exclusions.

    Parameters
    ----------
    per_class : (K,) array_like
        A per-class score, NaN where undefined.
    weights : (K,) array_like, keyword-only, optional
        Weights of a weighted mean (e.g. the target support).
    exclude_classes : sequence of int, keyword-only
        Classes left out (e.g. background).

    Returns
    -------
    float
        NaN if no class remains.

    Raises
    ------
    ValueError
        If an excluded class is not an index below K.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import mean_score
    >>> mean_score([0.5, np.nan, 1.0])
    0.75
    >>> mean_score([0.5, np.nan, 1.0], exclude_classes=[0])
    1.0
    """
    values = np.asarray(per_class, np.float64)
    keep = ~np.isnan(values)
    for c in exclude_classes:
        if not 0 <= int(c) < values.size:
            raise ValueError(f"exclude_classes entry {c} is not a class index below {values.size}")
        keep[int(c)] = False
    if not keep.any():
        return float("nan")
    if weights is None:
        return float(values[keep].mean())
    w = np.asarray(weights, np.float64)[keep]
    return float((values[keep] * w).sum() / w.sum()) if w.sum() > 0 else float("nan")


def mean_accuracy(cm, *, exclude_classes=()) -> float:
    """Mean class accuracy: the mean recall over classes present in the target.

    Parameters
    ----------
    cm : (K, K) array_like or torch.Tensor
        Confusion matrix, rows = target, columns = prediction (any numeric dtype).
    exclude_classes : sequence of int, keyword-only
        Classes left out of the mean.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If ``cm`` is not square (K, K) with K >= 1, or an excluded class is out of range.
    TypeError
        If ``cm`` is not numeric.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import mean_accuracy
    >>> cm = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])   # rows = target; class 2 absent
    >>> mean_accuracy(cm)
    0.875
    """
    tp, _, fn, support = per_class_counts(cm)
    acc = np.where(support > 0, tp / np.maximum(support, 1), np.nan)
    return mean_score(acc, exclude_classes=exclude_classes)


def fw_iou(cm, *, exclude_classes=()) -> float:
    """Frequency-weighted IoU: per-class IoU weighted by each class's share of the target.

    Parameters
    ----------
    cm : (K, K) array_like or torch.Tensor
        Confusion matrix, rows = target, columns = prediction (any numeric dtype).
    exclude_classes : sequence of int, keyword-only
        Classes left out of the mean.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If ``cm`` is not square (K, K) with K >= 1, or an excluded class is out of range.
    TypeError
        If ``cm`` is not numeric.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import fw_iou
    >>> cm = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])   # rows = target; class 2 absent
    >>> round(fw_iou(cm), 4)
    0.7222
    """
    _, _, _, support = per_class_counts(cm)
    return mean_score(iou(cm), weights=support, exclude_classes=exclude_classes)


def micro_iou(cm) -> float:
    """Micro-averaged IoU: sum TP / sum (TP + FP + FN).

    For single-label maps it equals acc / (2 - acc); it is not mIoU.

    Parameters
    ----------
    cm : (K, K) array_like or torch.Tensor
        Confusion matrix, rows = target, columns = prediction (any numeric dtype).

    Returns
    -------
    float
        NaN if nothing was counted.

    Raises
    ------
    ValueError
        If ``cm`` is not square (K, K) with K >= 1.
    TypeError
        If ``cm`` is not numeric.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import micro_iou
    >>> cm = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])   # rows = target; class 2 absent
    >>> micro_iou(cm)
    0.7142857142857143
    """
    tp, fp, fn, _ = per_class_counts(cm)
    den = (tp + fp + fn).sum()
    return float(tp.sum() / den) if den > 0 else float("nan")
