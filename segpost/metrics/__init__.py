"""Segmentation metrics: confusion matrix, IoU/Dice family, streaming and distributed, boundary metrics."""
from .boundary import BoundaryFScoreResult, BoundaryIoUResult, TrimapResult, boundary_fscore, boundary_iou, label_boundaries, trimap_metrics
from .confusion import ConfusionResult, confusion_matrix, warmup
from .scores import (
    dice, fw_iou, iou, mean_accuracy, mean_score, micro_iou, per_class_counts, pixel_accuracy, precision, recall,
    valid_classes,
)
from .stateful import SegMetrics, SegMetricsResult

__all__ = [
    "BoundaryFScoreResult", "BoundaryIoUResult", "TrimapResult", "ConfusionResult", "SegMetrics", "boundary_fscore", "boundary_iou", "label_boundaries", "trimap_metrics", "SegMetricsResult", "confusion_matrix", "dice", "fw_iou", "iou",
    "mean_accuracy", "mean_score", "micro_iou", "per_class_counts", "pixel_accuracy", "precision", "recall",
    "valid_classes", "warmup",
]
