"""segpost's metrics as ``torchmetrics.Metric`` objects, for Lightning's ``self.log(name, metric)``.

Each class keeps only counts, summed across processes (``dist_reduce_fx="sum"``):
the confusion matrix for :class:`MeanIoU`, :class:`Dice` and
:class:`PixelAccuracy`, the per-class band intersections and unions for
:class:`BoundaryIoU`. They are counted by segpost's kernels
(:func:`segpost.metrics.confusion_matrix`, :func:`segpost.metrics.boundary_iou`)
and scored by :class:`segpost.SegMetricsResult`, so every value equals
:class:`segpost.SegMetrics`'s on the same data. ``compute()`` returns a scalar
float64 tensor; ``forward()`` (calling the metric) returns the batch's value
and adds the batch to the state.

torchmetrics is optional: ``pip install segpost[lightning]``.
"""
from __future__ import annotations

try:
    import torch
    from torchmetrics import Metric
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        f"segpost.metrics.lightning needs torchmetrics ({exc}); install it with: pip install segpost[lightning]"
    ) from exc

import numpy as np

from .confusion import confusion_matrix, prepare_labels
from .stateful import SegMetrics, SegMetricsResult

__all__ = ["BoundaryIoU", "Dice", "MeanIoU", "PixelAccuracy"]


class _ConfusionMetric(Metric):
    """A torchmetrics Metric whose state is the (K, K) int64 confusion matrix; subclasses name the score."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True
    _score = None  # the SegMetricsResult attribute compute() returns

    def __init__(self, num_classes, *, ignore_index=None, absent="nan", exclude_classes=(), **kwargs):
        super().__init__(**kwargs)
        # SegMetrics validates and normalises the settings: one set of rules for both.
        settings = SegMetrics(num_classes, ignore_index=ignore_index, absent=absent, exclude_classes=exclude_classes)
        self.num_classes, self.ignore_index = settings.num_classes, settings.ignore_index
        self.absent, self.exclude_classes = settings.absent, settings.exclude_classes
        self.add_state("confusion", default=torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64),
                       dist_reduce_fx="sum")

    def update(self, preds, target):
        """Count a batch: labels (B, H, W) or scores (B, C, H, W) against (B, H, W) targets, or one image."""
        preds, target = prepare_labels(preds, target)
        cm = confusion_matrix(preds, target, self.num_classes, ignore_index=self.ignore_index)
        self.confusion += torch.as_tensor(cm if isinstance(cm, torch.Tensor) else np.asarray(cm)).to(
            self.confusion.device)

    def _result(self):
        return SegMetricsResult(self.confusion.detach().cpu().numpy(), absent=self.absent,
                                exclude_classes=self.exclude_classes)

    def compute(self):
        return torch.tensor(float(getattr(self._result(), self._score)), dtype=torch.float64)


class MeanIoU(_ConfusionMetric):
    """Mean IoU over the dataset as a ``torchmetrics.Metric``: ``SegMetrics(...).compute().miou``.

    Parameters
    ----------
    num_classes : int
    ignore_index : int or collection of int, keyword-only
        Target values left out (e.g. 255).
    absent : {"nan", 0, 1}, keyword-only
        Score of a class in neither target nor prediction ("nan": left out of the mean).
    exclude_classes : sequence of int, keyword-only
        Classes left out of the mean.
    **kwargs
        ``torchmetrics.Metric`` options (``sync_on_compute``, ``process_group``, ...).

    Examples
    --------
    >>> import torch
    >>> from segpost.metrics.lightning import MeanIoU
    >>> miou = MeanIoU(3, ignore_index=255)
    >>> target = torch.tensor([[[0, 1], [2, 255]]])
    >>> miou(torch.tensor([[[0, 1], [1, 2]]]), target)      # the batch's value; the batch is counted
    tensor(0.5000, dtype=torch.float64)
    >>> miou.update(target, target)
    >>> miou.compute()                                      # over both batches
    tensor(0.7222, dtype=torch.float64)

    In a ``LightningModule``: ``self.val_miou = MeanIoU(K)``, then in
    ``validation_step`` ``self.val_miou.update(logits, target)`` and
    ``self.log("val/miou", self.val_miou)`` (Lightning computes and resets it
    at the end of the epoch, summed over processes).
    """

    _score = "miou"


class Dice(_ConfusionMetric):
    """Mean Dice over the dataset as a ``torchmetrics.Metric``: ``SegMetrics(...).compute().mdice``.

    Parameters
    ----------
    num_classes : int
    ignore_index : int or collection of int, keyword-only
    absent : {"nan", 0, 1}, keyword-only
    exclude_classes : sequence of int, keyword-only
    **kwargs
        ``torchmetrics.Metric`` options.

    Examples
    --------
    >>> import torch
    >>> from segpost.metrics.lightning import Dice
    >>> dice = Dice(2)
    >>> dice.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [0, 1]]))
    >>> round(float(dice.compute()), 4)
    0.7333
    """

    _score = "mdice"


class PixelAccuracy(_ConfusionMetric):
    """Pixel accuracy over the dataset as a ``torchmetrics.Metric``: ``SegMetrics(...).compute().pixel_accuracy``.

    Parameters
    ----------
    num_classes : int
    ignore_index : int or collection of int, keyword-only
    absent : {"nan", 0, 1}, keyword-only
        Accepted for a uniform signature; pixel accuracy has no absent classes.
    exclude_classes : sequence of int, keyword-only
        Accepted likewise; every counted pixel counts.
    **kwargs
        ``torchmetrics.Metric`` options.

    Examples
    --------
    >>> import torch
    >>> from segpost.metrics.lightning import PixelAccuracy
    >>> accuracy = PixelAccuracy(2)
    >>> accuracy.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [0, 1]]))
    >>> accuracy.compute()
    tensor(0.7500, dtype=torch.float64)
    """

    _score = "pixel_accuracy"


class BoundaryIoU(Metric):
    """Dataset-level mean Boundary IoU as a ``torchmetrics.Metric``: ``SegMetrics(..., boundary=True)``'s
    ``mboundary_iou``.

    Each image of a batch adds its per-class band intersections and unions
    (:func:`segpost.metrics.boundary_iou`, the official definition) to the
    state; ``compute()`` divides the sums and averages over classes with a band.

    Parameters
    ----------
    num_classes : int
    dilation_ratio : float, keyword-only, default 0.02
        The band width as a fraction of each image's diagonal.
    ignore_index : int or collection of int, keyword-only
    exclude_classes : sequence of int, keyword-only
    **kwargs
        ``torchmetrics.Metric`` options.

    Examples
    --------
    >>> import torch
    >>> from segpost.metrics.lightning import BoundaryIoU
    >>> target = torch.zeros(1, 16, 16, dtype=torch.long); target[:, 4:12, 4:12] = 1
    >>> biou = BoundaryIoU(2)
    >>> biou(target, target)
    tensor(1., dtype=torch.float64)
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_classes, *, dilation_ratio=0.02, ignore_index=None, exclude_classes=(), **kwargs):
        super().__init__(**kwargs)
        settings = SegMetrics(num_classes, ignore_index=ignore_index, exclude_classes=exclude_classes,
                              boundary=True, boundary_dilation_ratio=dilation_ratio)
        self.num_classes, self.ignore_index = settings.num_classes, settings.ignore_index
        self.exclude_classes, self.dilation_ratio = settings.exclude_classes, settings.boundary_dilation_ratio
        for name in ("intersection", "union"):
            self.add_state(name, default=torch.zeros(self.num_classes, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds, target):
        """Count a batch of (B, H, W) labels or (B, C, H, W) scores against (B, H, W) targets, or one image."""
        from .boundary import boundary_iou

        preds, target = prepare_labels(preds, target)
        pairs = [(preds, target)] if target.ndim <= 2 else [(preds[i], target[i]) for i in range(target.shape[0])]
        for p, t in pairs:
            counts = boundary_iou(p, t, self.num_classes, dilation_ratio=self.dilation_ratio,
                                  ignore_index=self.ignore_index)
            self.intersection += torch.as_tensor(counts.intersection).to(self.intersection.device)
            self.union += torch.as_tensor(counts.union).to(self.union.device)

    def compute(self):
        k = self.num_classes
        result = SegMetricsResult(np.zeros((k, k), np.int64), exclude_classes=self.exclude_classes,
                                  boundary_counts=(self.intersection.cpu().numpy(), self.union.cpu().numpy()))
        return torch.tensor(float(result.mboundary_iou), dtype=torch.float64)
