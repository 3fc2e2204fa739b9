"""Segmentation metrics: confusion matrix, IoU/Dice family, streaming and distributed, boundary and surface metrics."""
from .boundary import BoundaryFScoreResult, BoundaryIoUResult, TrimapResult, boundary_fscore, boundary_iou, label_boundaries, trimap_metrics
from ._warmup import warmup
from .confusion import ConfusionResult, confusion_matrix
from .scores import (
    dice, fw_iou, iou, mean_accuracy, mean_score, micro_iou, per_class_counts, pixel_accuracy, precision, recall,
    valid_classes,
)
from .stateful import SegMetrics, SegMetricsResult
from .surface import (
    CaseMetricsResult, HausdorffDistanceResult, case_metrics, SurfaceDiceResult, SurfaceDistanceResult, average_surface_distance, hausdorff_distance,
    surface_dice,
)

__all__ = [
    "BoundaryFScoreResult", "BoundaryIoUResult", "TrimapResult", "ConfusionResult", "SegMetrics", "boundary_fscore", "boundary_iou", "label_boundaries", "trimap_metrics", "SegMetricsResult", "confusion_matrix", "dice", "fw_iou", "iou",
    "mean_accuracy", "mean_score", "micro_iou", "per_class_counts", "pixel_accuracy", "precision", "recall",
    "valid_classes", "warmup", "HausdorffDistanceResult", "SurfaceDiceResult", "SurfaceDistanceResult",
    "average_surface_distance", "hausdorff_distance", "surface_dice", "CaseMetricsResult", "case_metrics",
]
