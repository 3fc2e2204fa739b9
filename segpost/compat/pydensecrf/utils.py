"""``pydensecrf.utils`` on segpost: unaries from softmax or labels, pairwise features.

Same conventions as pydensecrf: energies and features are float32 arrays of
shape (n_labels, N) and (D, N), pixels flattened in C order.
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np

__all__ = [
    "unary_from_softmax", "unary_from_labels", "create_pairwise_gaussian", "create_pairwise_bilateral",
    "softmax_to_unary", "compute_unary",
]


def unary_from_softmax(sm, scale=None, clip=1e-5):
    """Unary energy -log(p) from class probabilities ``sm`` of shape (n_labels, ...).

    ``scale`` in (0, 1] blends the probabilities with a uniform distribution
    (p <- scale * p + (1 - scale) / n_labels); ``clip`` bounds them below
    before the log (None: no clipping). Returns float32 (n_labels, N).

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.compat.pydensecrf.utils import unary_from_softmax
    >>> unary_from_softmax(np.array([[0.9, 0.0], [0.1, 1.0]]))
    array([[ 0.10536052, 11.512925  ],
           [ 2.3025851 , -0.        ]], dtype=float32)
    """
    sm = np.asarray(sm)
    if sm.ndim < 2 or sm.shape[0] < 1 or sm.dtype.kind not in "fiu":
        raise ValueError(f"sm must be a numeric (n_labels, ...) array of probabilities, got shape {sm.shape}")
    num_classes = sm.shape[0]
    if scale is not None:
        if not 0 < scale <= 1:
            raise ValueError(f"`scale` needs to be in (0,1], got {scale}")
        sm = scale * sm + (1 - scale) / num_classes
    if clip is not None:
        sm = np.clip(sm, clip, 1.0)
    with np.errstate(divide="ignore"):
        return -np.log(sm).reshape([num_classes, -1]).astype(np.float32)


def unary_from_labels(labels, n_labels, gt_prob, zero_unsure=True):
    """Unary energy from a label map: each pixel trusts its label with probability ``gt_prob``.

    With ``zero_unsure`` (default), label 0 means "unsure" (uniform energy)
    and labels 1..n_labels map to classes 0..n_labels-1; otherwise labels are
    classes 0..n_labels-1. Returns float32 (n_labels, N).
    """
    if not 0 < gt_prob < 1:
        raise ValueError(f"`gt_prob must be in (0,1), got {gt_prob}")
    if isinstance(n_labels, bool) or not isinstance(n_labels, numbers.Integral) or n_labels < 2:
        raise ValueError(f"n_labels must be an integer >= 2 (the rest of gt_prob is shared by the other labels), "
                         f"got {n_labels!r}")
    labels = np.asarray(labels).ravel()
    if labels.dtype.kind not in "iub":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    lo, hi = (1, n_labels) if zero_unsure else (0, n_labels - 1)
    valid = (labels >= lo) & (labels <= hi) | (zero_unsure & (labels == 0))
    if not valid.all():
        bad = labels[~valid][0]
        raise ValueError(f"labels must be in [{0 if zero_unsure else lo}, {hi}] for n_labels={n_labels}"
                         f"{' with zero_unsure' if zero_unsure else ''}; found {bad}")
    n_energy = -np.log((1.0 - gt_prob) / (n_labels - 1))
    p_energy = -np.log(gt_prob)
    unary = np.full((n_labels, labels.size), n_energy, dtype=np.float32)
    classes = labels - 1 if zero_unsure else labels
    sure = classes >= 0
    unary[classes[sure], np.flatnonzero(sure)] = p_energy
    if zero_unsure:
        unary[:, labels == 0] = -np.log(1.0 / n_labels)
    return unary


def create_pairwise_gaussian(sdims, shape):
    """Features of the smoothness kernel: grid positions divided by ``sdims``, float32 (len(shape), N).

    Axis order is that of ``shape`` (row, then column for an image).
    """
    shape = tuple(int(s) for s in shape)
    sdims = tuple(float(s) for s in sdims)
    if len(sdims) != len(shape) or any(s <= 0 for s in sdims):
        raise ValueError(f"sdims must give one positive bandwidth per axis of shape {shape}, got {sdims}")
    mesh = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    feats = np.stack([m / np.float32(s) for m, s in zip(mesh, sdims)])
    return feats.reshape(len(sdims), -1)


def create_pairwise_bilateral(sdims, schan, img, chdim=-1):
    """Features of the appearance kernel: positions / ``sdims`` and channels / ``schan``, float32 (D, N).

    ``chdim`` is the channel axis of ``img``; -1 means the image has no channel
    axis (a single channel), as in pydensecrf.
    """
    img = np.asarray(img)
    im_feat = img[np.newaxis].astype(np.float32) if chdim == -1 else np.moveaxis(img, chdim, 0).astype(np.float32)
    if isinstance(schan, numbers.Number):
        im_feat /= np.float32(schan)
    else:
        schan = tuple(schan)
        if len(schan) != im_feat.shape[0]:
            raise ValueError(f"schan must be a number or one value per channel ({im_feat.shape[0]}), got {schan}")
        for i, s in enumerate(schan):
            im_feat[i] /= np.float32(s)
    positions = create_pairwise_gaussian(sdims, im_feat.shape[1:]).reshape(len(sdims), *im_feat.shape[1:])
    feats = np.concatenate([positions, im_feat])
    return np.ascontiguousarray(feats.reshape(feats.shape[0], -1))


def softmax_to_unary(sm, GT_PROB=1):
    """Deprecated: use unary_from_softmax."""
    warnings.warn("pydensecrf.softmax_to_unary is deprecated, use unary_from_softmax instead.",
                  DeprecationWarning, stacklevel=2)
    scale = None if GT_PROB == 1 else GT_PROB
    return unary_from_softmax(sm, scale, clip=None)


def compute_unary(labels, M, GT_PROB=0.5):
    """Deprecated: use unary_from_labels."""
    warnings.warn("pydensecrf.compute_unary is deprecated, use unary_from_labels instead.",
                  DeprecationWarning, stacklevel=2)
    return unary_from_labels(labels, M, GT_PROB)
