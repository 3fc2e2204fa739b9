"""SegMetrics: a streaming metric whose only state is the confusion matrix."""
from __future__ import annotations

import json
import math

import numpy as np

from .._validation import is_torch_tensor
from . import scores
from .confusion import _check_num_classes, _normalise_ignore, confusion_matrix, prepare_labels

__all__ = ["SegMetrics", "SegMetricsResult"]


def _plain(value):
    """A setting as _settings() writes it (tuples of a loaded state as lists, tensors as numbers)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


class SegMetricsResult:
    """Scores derived from a confusion matrix, per class and averaged.

    Attributes
    ----------
    confusion : (K, K) int64 ndarray
        Rows = target, columns = prediction.
    iou, dice, precision, recall : (K,) float64
        Per-class scores (``absent`` for classes in neither target nor prediction).
    miou, mdice, mprecision, mrecall : float
        Macro means over valid, non-excluded classes (dataset-level: the
        summed matrix is scored once).
    weighted_miou, micro_iou : float
        IoU weighted by target support, and micro-averaged (sum TP / sum (TP+FP+FN)).
    pixel_accuracy, mean_accuracy, fw_iou : float
    counts : (K,) int64
        Target pixels per class.
    num_valid_classes : int
        Classes present in the target or the prediction (and not excluded).
    num_invalid : int
        Pixels dropped for out-of-range labels (``on_invalid="ignore"``).
    per_image_miou : float or None
        Mean over cases (images, or volumes with ``spatial_ndim=3``) of each
        case's mIoU (only with ``per_image=True``); a different number from
        the dataset-level ``miou``.
    per_image_mdice : float or None
        The same mean of each case's mDice (the per-case Dice medical
        evaluations report, nnU-Net's ``summary.json`` mean).
    num_images : int
        Cases counted: images, or volumes with ``spatial_ndim=3`` (each case
        of a batch once).
    num_scored_images : int
        Cases with a per-case mIoU (with ``per_image=True``; a case with
        no pixel counted has none).
    spatial_ndim : int
        2 (cases are images) or 3 (volumes).
    boundary_iou : (K,) float64 or None
        Dataset-level Boundary IoU per class (only with ``boundary=True``):
        the summed band intersections over the summed band unions, as
        ``segpost.metrics.boundary_iou`` counts them per image.
    mboundary_iou : float or None
        Their mean over classes with a band (and not excluded).
    hd95, assd, nsd : (K,) float64 or None
        Per-class means over cases of each case's HD95, average symmetric
        surface distance and normalized surface Dice (only with
        ``surface=True``; see ``segpost.metrics.case_metrics``): NaN for a
        class no case had, inf for HD95 and ASSD if a case had the class in
        one map only.
    mhd95, massd, mnsd : float or None
        Their means over classes (not excluded).
    num_cases : int
        Cases (images or volumes) behind the surface means.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost import SegMetrics
    >>> metrics = SegMetrics(2, class_names=["sky", "road"])
    >>> metrics.update(np.array([[0, 1], [1, 1]]), np.array([[0, 1], [0, 1]]))
    >>> result = metrics.compute()
    >>> result.iou.round(3).tolist(), result.miou, result.pixel_accuracy
    ([0.5, 0.667], 0.5833333333333333, 0.75)
    """

    def __init__(self, confusion, *, absent="nan", exclude_classes=(), class_names=None, num_invalid=0,
                 per_image_miou=None, num_images=0, num_scored_images=0, boundary_counts=None,
                 surface_means=None, num_cases=0, per_image_mdice=None, spatial_ndim=2):
        self.confusion = np.array(confusion, np.int64)  # a copy: later updates never change a result
        k = self.confusion.shape[0]
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
        self.exclude_classes = tuple(int(c) for c in exclude_classes)
        self.absent = absent
        self.iou = scores.iou(self.confusion, absent=absent)
        self.dice = scores.dice(self.confusion, absent=absent)
        self.precision = scores.precision(self.confusion, absent=absent)
        self.recall = scores.recall(self.confusion, absent=absent)
        ex = self.exclude_classes
        self.miou = scores.mean_score(self.iou, exclude_classes=ex)
        self.mdice = scores.mean_score(self.dice, exclude_classes=ex)
        self.mprecision = scores.mean_score(self.precision, exclude_classes=ex)
        self.mrecall = scores.mean_score(self.recall, exclude_classes=ex)
        self.counts = self.confusion.sum(axis=1)
        self.weighted_miou = scores.mean_score(self.iou, weights=self.counts, exclude_classes=ex)
        self.micro_iou = scores.micro_iou(self.confusion)
        self.pixel_accuracy = scores.pixel_accuracy(self.confusion)
        self.mean_accuracy = scores.mean_accuracy(self.confusion, exclude_classes=ex)
        self.fw_iou = scores.fw_iou(self.confusion, exclude_classes=ex)
        valid = scores.valid_classes(self.confusion)
        valid[list(ex)] = False
        self.num_valid_classes = int(valid.sum())
        self.num_invalid = int(num_invalid)
        self.per_image_miou = per_image_miou
        self.per_image_mdice = per_image_mdice
        self.spatial_ndim = int(spatial_ndim)
        self.num_images = int(num_images)
        self.num_scored_images = int(num_scored_images)
        self.boundary_iou = self.mboundary_iou = None
        if boundary_counts is not None:
            from .boundary import band_iou

            self.boundary_iou = band_iou(*(np.asarray(c, np.int64) for c in boundary_counts))
            self.mboundary_iou = scores.mean_score(self.boundary_iou, exclude_classes=ex)
        self.hd95 = self.assd = self.nsd = self.mhd95 = self.massd = self.mnsd = None
        self.num_cases = int(num_cases)
        if surface_means is not None:
            self.hd95, self.assd, self.nsd = (np.array(m, np.float64) for m in surface_means)
            self.mhd95, self.massd, self.mnsd = (scores.mean_score(m, exclude_classes=ex)
                                                 for m in (self.hd95, self.assd, self.nsd))

    def table(self, digits=2) -> str:
        """Aligned text: a row per class (IoU, Dice, precision, recall, Boundary IoU if counted, pixels), the means."""
        def pct(x):
            return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"

        boundary = self.boundary_iou is not None
        surface = self.hd95 is not None
        volumes = self.spatial_ndim == 3
        cases, points = ("volumes", "voxels") if volumes else ("images", "pixels")

        def dist(x):
            return "-" if math.isnan(x) else f"{x:.{digits}f}"

        def surface_cells(hd95, assd, nsd):
            return f"{dist(hd95):>7}  {dist(assd):>7}  {pct(nsd):>7}  " if surface else ""

        width = max(5, *(len(n) for n in self.class_names))
        lines = [f"{'class':<{width}}  {'IoU':>7}  {'Dice':>7}  {'Prec':>7}  {'Recall':>7}  "
                 + (f"{'BIoU':>7}  " if boundary else "")
                 + (f"{'HD95':>7}  {'ASSD':>7}  {'NSD':>7}  " if surface else "") + f"{points:>12}"]
        for c, name in enumerate(self.class_names):
            mark = " (excluded)" if c in self.exclude_classes else ""
            lines.append(
                f"{name:<{width}}  {pct(self.iou[c]):>7}  {pct(self.dice[c]):>7}  {pct(self.precision[c]):>7}  "
                f"{pct(self.recall[c]):>7}  " + (f"{pct(self.boundary_iou[c]):>7}  " if boundary else "")
                + (surface_cells(self.hd95[c], self.assd[c], self.nsd[c]) if surface else "")
                + f"{int(self.counts[c]):>12}{mark}"
            )
        lines.append(f"{'mean':<{width}}  {pct(self.miou):>7}  {pct(self.mdice):>7}  {pct(self.mprecision):>7}  "
                     f"{pct(self.mrecall):>7}  " + (f"{pct(self.mboundary_iou):>7}  " if boundary else "")
                     + (surface_cells(self.mhd95, self.massd, self.mnsd) if surface else "")
                     + f"{int(self.counts.sum()):>12}")
        lines.append(f"mIoU {pct(self.miou)} over {self.num_valid_classes} valid classes | pixel acc "
                     f"{pct(self.pixel_accuracy)} | mean acc {pct(self.mean_accuracy)} | fwIoU {pct(self.fw_iou)}"
                     + (f" | Boundary IoU {pct(self.mboundary_iou)}" if boundary else ""))
        if surface:
            lines.append(f"HD95, ASSD (in the units of the spacing) and NSD (%): means over {self.num_cases} cases")
        if self.per_image_miou is not None:
            case = "per-volume" if volumes else "per-image"
            dice = "" if self.per_image_mdice is None else f", mDice {pct(self.per_image_mdice)}"
            lines.append(f"{case} mIoU {pct(self.per_image_miou)}{dice} over {self.num_scored_images} {cases}")
        if self.num_invalid:
            lines.append(f"{self.num_invalid} {points} with out-of-range labels were dropped")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-safe dict (NaN becomes None)."""
        def clean(x):
            if isinstance(x, np.ndarray):
                return [clean(v) for v in x.tolist()]
            if isinstance(x, list):
                return [clean(v) for v in x]
            if isinstance(x, float) and math.isnan(x):
                return None
            return x

        out = {name: clean(getattr(self, name)) for name in (
            "miou", "mdice", "mprecision", "mrecall", "weighted_miou", "micro_iou", "pixel_accuracy",
            "mean_accuracy", "fw_iou", "num_valid_classes", "num_invalid", "per_image_miou", "per_image_mdice",
            "num_images", "num_scored_images", "mboundary_iou", "mhd95", "massd", "mnsd", "num_cases",
            "spatial_ndim")}
        out["boundary_iou"] = None if self.boundary_iou is None else clean(self.boundary_iou)
        for name in ("hd95", "assd", "nsd"):  # inf (a class in one map only) as the string "inf"
            value = getattr(self, name)
            out[name] = None if value is None else [None if math.isnan(v) else ("inf" if math.isinf(v) else v)
                                                    for v in value.tolist()]
        for name in ("mhd95", "massd"):
            if out[name] is not None and math.isinf(out[name]):
                out[name] = "inf"
        out.update({name: clean(np.asarray(getattr(self, name), np.float64)) for name in ("iou", "dice", "precision", "recall")})
        out["counts"] = self.counts.tolist()
        out["class_names"] = self.class_names
        out["confusion"] = self.confusion.tolist()
        out["exclude_classes"] = list(self.exclude_classes)
        json.dumps(out)  # guaranteed serialisable
        return out

    def __repr__(self):
        return (f"SegMetricsResult(miou={self.miou:.4f}, pixel_accuracy={self.pixel_accuracy:.4f}, "
                f"num_valid_classes={self.num_valid_classes})")


class SegMetrics:
    """Streaming segmentation metrics for any eval loop; the state is the confusion matrix.

    Parameters
    ----------
    num_classes : int
    ignore_index : int or collection of int, keyword-only
    class_names : sequence of str, keyword-only
    per_image : bool, keyword-only, default False
        Also track the mean over cases of each case's mIoU and mDice
        (``per_image_miou``, ``per_image_mdice``): a case is an image, or a
        volume with ``spatial_ndim=3``. Each case of a batch counts once.
    absent : {"nan", 0, 1}, keyword-only
        Score of classes absent from both target and prediction (see scores).
    exclude_classes : sequence of int, keyword-only
        Classes left out of the means (e.g. background).
    on_invalid : {"raise", "ignore"}, keyword-only
    boundary : bool, keyword-only, default False
        Also accumulate Boundary IoU (``segpost.metrics.boundary_iou``, the
        official definition) over the dataset: per image, each class's band
        intersection and union are added to the state, and ``compute()``
        reports ``boundary_iou`` and ``mboundary_iou`` next to mIoU. Each
        case of a batch counts on its own (a (B, H, W) target is B images);
        a volume's band is 3-D (``boundary_iou`` on a (D, H, W) volume).
    boundary_dilation_ratio : float, keyword-only, default 0.02
        The band width as a fraction of each case's diagonal (in voxels).
    surface : bool, keyword-only, default False
        Also average each case's HD95, average symmetric surface distance and
        normalized surface Dice per class over the cases
        (``segpost.metrics.case_metrics``; per-case means, not a summed
        matrix). Excluded classes are not computed.
    spacing : float or sequence of float, keyword-only, optional
        The default voxel spacing of the surface metrics
        (``update(..., spacing=)`` gives each case's own, e.g. from its NIfTI
        header). Default: 1 along every axis.
    tolerance : float or (K,) sequence of float, keyword-only, default 1.0
        The surface Dice's tolerance, in the units of the spacing.
    spatial_ndim : {2, 3}, keyword-only, optional
        What one case is, the one rule for telling a batch of volumes from a
        batch of images: 2, images: an (H, W) target is one image and a
        (B, H, W) target a batch of B; 3, volumes: a (D, H, W) target is one
        volume and a (B, D, H, W) target a batch of B (scores have their class
        axis first: (C, D, H, W), or (B, C, D, H, W)). Default: the length of a
        3-long ``spacing``, else 2. Nothing is guessed from the shapes: a
        (D, H, W) target counts as D images unless ``spatial_ndim=3`` (or a
        3-long spacing) says it is a volume.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost import SegMetrics
    >>> metrics = SegMetrics(3, ignore_index=255, class_names=["sky", "road", "car"])
    >>> for _ in range(4):                                   # your eval loop
    ...     target = np.random.default_rng(0).integers(0, 3, (2, 8, 8))
    ...     metrics.update(target, target)                   # (pred, target), batches too
    >>> result = metrics.compute()
    >>> result.miou, result.pixel_accuracy
    (1.0, 1.0)
    >>> int(metrics.state_dict()["confusion"].sum())
    512

    Volumes, with surface distances in millimetres:

    >>> volumes = SegMetrics(2, surface=True, spacing=(3.0, 0.8, 0.8), tolerance=2.0, exclude_classes=[0])
    >>> volumes.spatial_ndim                     # from the 3-long spacing
    3
    >>> target = np.zeros((4, 16, 16), np.uint8); target[1:3, 4:12, 4:12] = 1
    >>> cases = volumes.update(np.roll(target, 1, axis=2), target)   # one (D, H, W) volume
    >>> result = volumes.compute()
    >>> float(result.hd95[1]), float(result.nsd[1]), result.num_cases
    (0.8, 1.0, 1)

    Per-volume means, each (D, H, W) volume one case:

    >>> per_volume = SegMetrics(2, per_image=True, spatial_ndim=3)
    >>> per_volume.update(np.stack([target, target]), np.stack([target, np.roll(target, 1, axis=2)]))
    >>> per_volume.compute().num_images
    2
    """

    def __init__(self, num_classes, *, ignore_index=None, class_names=None, per_image=False, absent="nan",
                 exclude_classes=(), on_invalid="raise", boundary=False, boundary_dilation_ratio=0.02, surface=False,
                 spacing=None, tolerance=1.0, spatial_ndim=None):
        self.num_classes = _check_num_classes(num_classes)
        self.ignore_index = _normalise_ignore(ignore_index)
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for {self.num_classes} classes")
        scores._absent_value(absent)
        for c in exclude_classes:
            if not 0 <= int(c) < self.num_classes:
                raise ValueError(f"exclude_classes entry {c} is not a class index below {self.num_classes}")
        self.class_names = class_names
        self.per_image = bool(per_image)
        self.absent = absent
        self.exclude_classes = tuple(int(c) for c in exclude_classes)
        self.on_invalid = on_invalid
        self.boundary = bool(boundary)
        if not (isinstance(boundary_dilation_ratio, (int, float)) and 0 < boundary_dilation_ratio <= 1):
            raise ValueError(f"boundary_dilation_ratio must be in (0, 1], got {boundary_dilation_ratio!r}")
        self.boundary_dilation_ratio = float(boundary_dilation_ratio)
        self.surface = bool(surface)
        self.spatial_ndim = _spatial_ndim(spatial_ndim, spacing)
        self.spacing = _surface_spacing(spacing, self.spatial_ndim)
        self.tolerance = _check_tolerance(tolerance, self.num_classes)
        self.reset()

    def reset(self):
        """Forget everything counted so far (and any synced sums)."""
        self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
        self.num_invalid = 0
        self.first_invalid = None  # the first out-of-range label counted, for messages (not part of the state)
        self.per_image_sum = 0.0
        self.per_image_dice_sum = 0.0
        self.num_images = 0
        self.num_scored_images = 0
        self.boundary_intersection = np.zeros(self.num_classes, np.int64)
        self.boundary_union = np.zeros(self.num_classes, np.int64)
        # Per class, HD95, ASSD and NSD: sums over the cases that have a value, and how many cases those are.
        self.surface_sums = np.zeros((3, self.num_classes), np.float64)
        self.surface_counts = np.zeros((3, self.num_classes), np.int64)
        self.num_cases = 0
        self._local_state = None  # this process's own counts while the state holds synced sums

    def _check_not_synced(self, action):
        if self._local_state is not None:
            raise RuntimeError(f"cannot {action} while the state holds the sums over processes from sync(); "
                               f"call unsync() first to get this process's own counts back")

    def update(self, pred, target, *, spacing=None):
        """Count one image or a batch: labels, or scores with a class axis (see confusion_matrix).

        With ``surface=True``, ``spacing`` is this case's (or batch's) voxel
        spacing (default: the constructor's), and each case's
        ``CaseMetricsResult`` comes back in a list (for a per-case table);
        otherwise it returns None.
        """
        self._check_not_synced("update")
        if self.surface:  # validated before anything is counted
            spacing = self.spacing if spacing is None else _surface_spacing(spacing, self.spatial_ndim)
        if self.spatial_ndim == 3:
            pred, target = _volume_labels(pred, target, self.num_classes)
        pred, target = prepare_labels(pred, target)
        if self.spatial_ndim == 3 or self.surface:
            cases = _surface_cases(pred, target, self.spatial_ndim)
        cm = confusion_matrix(pred, target, self.num_classes, ignore_index=self.ignore_index, on_invalid=self.on_invalid)
        self.confusion += _to_numpy(cm)
        self.num_invalid += int(getattr(cm, "num_invalid", 0))
        if self.first_invalid is None:
            self.first_invalid = getattr(cm, "first_invalid", None)
        # Cases: images, or volumes with spatial_ndim=3 (a volume is one case, whatever its depth).
        if self.spatial_ndim == 2 and not self.surface:  # (H, W), or a batch along the first axis, as always
            cases = [(pred, target)] if target.ndim <= 2 else [(pred[i], target[i]) for i in range(target.shape[0])]
        self.num_images += len(cases)
        if self.boundary:
            from .boundary import boundary_iou

            for p, t in cases:
                counts = boundary_iou(p, t, self.num_classes, dilation_ratio=self.boundary_dilation_ratio,
                                      ignore_index=self.ignore_index)
                self.boundary_intersection += counts.intersection
                self.boundary_union += counts.union
        if self.per_image:
            for p, t in cases:
                case_cm = _to_numpy(confusion_matrix(p, t, self.num_classes, ignore_index=self.ignore_index,
                                                     on_invalid="ignore"))
                value = scores.mean_score(scores.iou(case_cm, absent=self.absent), exclude_classes=self.exclude_classes)
                if not math.isnan(value):  # a case with nothing counted has no mIoU
                    self.per_image_sum += value
                    self.per_image_dice_sum += scores.mean_score(scores.dice(case_cm, absent=self.absent),
                                                                 exclude_classes=self.exclude_classes)
                    self.num_scored_images += 1
        if self.surface:
            return self._update_surface(cases, spacing)
        return None

    def _update_surface(self, cases, spacing):
        """Add each case's HD95, ASSD and NSD to the per-class sums; the cases' results."""
        from .surface import case_metrics

        results = [case_metrics(p, t, self.num_classes, spacing=spacing, tolerance=self.tolerance, percentile=95,
                                ignore_index=self.ignore_index, exclude_classes=self.exclude_classes)
                   for p, t in cases]
        for result in results:
            values = np.stack([result.hd, result.assd, result.nsd])
            has_value = ~np.isnan(values)
            self.surface_sums[has_value] += values[has_value]
            self.surface_counts += has_value
            self.num_cases += 1
        return results

    def compute(self) -> SegMetricsResult:
        """Scores of everything counted (dataset-level; per-image mean too if requested)."""
        per_image = per_image_dice = None
        if self.per_image:
            scored = self.num_scored_images
            per_image = self.per_image_sum / scored if scored else float("nan")
            per_image_dice = self.per_image_dice_sum / scored if scored else float("nan")
        boundary = (self.boundary_intersection, self.boundary_union) if self.boundary else None
        surface = None
        if self.surface:
            with np.errstate(invalid="ignore", divide="ignore"):
                surface = np.where(self.surface_counts > 0, self.surface_sums / np.maximum(self.surface_counts, 1),
                                   np.nan)
        return SegMetricsResult(self.confusion, absent=self.absent, exclude_classes=self.exclude_classes,
                                class_names=self.class_names, num_invalid=self.num_invalid,
                                per_image_miou=per_image, num_images=self.num_images,
                                num_scored_images=self.num_scored_images, boundary_counts=boundary,
                                surface_means=surface, num_cases=self.num_cases, per_image_mdice=per_image_dice,
                                spatial_ndim=self.spatial_ndim)

    def _settings(self):
        """What two states must share to be added: a different one would sum different counts."""
        return {"num_classes": self.num_classes, "ignore_index": list(self.ignore_index), "per_image": self.per_image,
                "boundary": self.boundary, "boundary_dilation_ratio": self.boundary_dilation_ratio,
                "surface": self.surface, "tolerance": self.tolerance.tolist(), "spatial_ndim": self.spatial_ndim}

    def _check_compatible(self, settings, action):
        mine = self._settings()
        # States saved before the settings were recorded carry only num_classes.
        different = [f"{key} {settings[key]!r} vs {mine[key]!r}" for key in mine
                     if key in settings and _plain(settings[key]) != mine[key]]
        if different:
            raise ValueError(f"cannot {action}: different settings ({'; '.join(different)})")

    def merge(self, other: "SegMetrics"):
        """Add another SegMetrics' counts (e.g. from another worker); the settings must agree."""
        if not isinstance(other, SegMetrics):
            raise TypeError(f"can only merge a SegMetrics, got {type(other).__name__}")
        self._check_compatible(other._settings(), "merge metrics")
        self._check_not_synced("merge")
        self.confusion += other.confusion
        self.num_invalid += other.num_invalid
        if self.first_invalid is None:
            self.first_invalid = other.first_invalid
        self.per_image_sum += other.per_image_sum
        self.per_image_dice_sum += other.per_image_dice_sum
        self.num_images += other.num_images
        self.num_scored_images += other.num_scored_images
        self.boundary_intersection += other.boundary_intersection
        self.boundary_union += other.boundary_union
        self.surface_sums += other.surface_sums
        self.surface_counts += other.surface_counts
        self.num_cases += other.num_cases
        return self

    def state_dict(self) -> dict:
        """The counts as torch tensors and plain numbers, and the settings they were counted with.

        It saves with ``torch.save`` and loads with ``torch.load(weights_only=True)``.
        """
        import torch

        return {"confusion": torch.from_numpy(self.confusion.copy()), "num_invalid": self.num_invalid,
                "per_image_sum": self.per_image_sum, "per_image_dice_sum": self.per_image_dice_sum,
                "num_images": self.num_images,
                "num_scored_images": self.num_scored_images,
                "boundary_intersection": torch.from_numpy(self.boundary_intersection.copy()),
                "boundary_union": torch.from_numpy(self.boundary_union.copy()),
                "surface_sums": torch.from_numpy(self.surface_sums.copy()),
                "surface_counts": torch.from_numpy(self.surface_counts.copy()), "num_cases": self.num_cases,
                **self._settings()}

    def load_state_dict(self, state: dict):
        """Replace the counts by a ``state_dict()``'s; its settings must agree with this object's.

        The whole state is checked before anything is replaced: every count
        must be there, of the right shape, and a finite non-negative integer
        (a ValueError names the first key that is not); a failed load leaves
        this object as it was.
        """
        self._check_not_synced("load a state")
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        self._check_compatible(state, "load the state")
        k = self.num_classes
        surface_state = _surface_state(state, k)  # validated, like everything, before anything is assigned
        counts = {name: _checked_counts(state, name, shape) for name, shape in (
            ("confusion", (k, k)), ("num_invalid", ()), ("num_images", ()),
            ("boundary_intersection", (k,)), ("boundary_union", (k,)))}
        # States saved before the count of scored images existed: every counted image was scored.
        counts["num_scored_images"] = (_checked_counts(state, "num_scored_images", ()) if "num_scored_images" in state
                                       else counts["num_images"])
        per_image_sum = _checked_number(state, "per_image_sum")
        if per_image_sum > counts["num_scored_images"]:
            raise ValueError(f"state's per_image_sum {per_image_sum} exceeds its {counts['num_scored_images']} "
                             f"scored images (each adds an mIoU of at most 1)")
        # States saved before per-case Dice was counted: unknown (NaN) unless no case was scored.
        per_image_dice_sum = (_checked_number(state, "per_image_dice_sum") if "per_image_dice_sum" in state
                              else (0.0 if counts["num_scored_images"] == 0 else float("nan")))
        if per_image_dice_sum > counts["num_scored_images"]:
            raise ValueError(f"state's per_image_dice_sum {per_image_dice_sum} exceeds its "
                             f"{counts['num_scored_images']} scored images (each adds an mDice of at most 1)")
        self.confusion = counts["confusion"]
        self.num_invalid = int(counts["num_invalid"])
        self.num_images = int(counts["num_images"])
        self.num_scored_images = int(counts["num_scored_images"])
        self.per_image_sum = per_image_sum
        self.per_image_dice_sum = per_image_dice_sum
        self.boundary_intersection = counts["boundary_intersection"]
        self.boundary_union = counts["boundary_union"]
        self.surface_sums, self.surface_counts, self.num_cases = surface_state
        return self

    def sync(self, group=None):
        """Sum the state over all torch.distributed processes: one all_reduce of the matrix (works with gloo).

        The state then holds the sums (for ``compute``); this process's own
        counts are kept aside, so a second ``sync`` sums them again instead of
        summing the sums, and ``unsync`` brings them back. ``update``,
        ``merge`` and ``load_state_dict`` raise while synced: they would mix a
        process's counts into everybody's. Without torch.distributed, or
        outside a process group, it does nothing.
        """
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        if self._local_state is not None:
            self.unsync()
        local = self.state_dict()
        k = self.num_classes
        flat = np.concatenate([self.confusion.reshape(-1), [self.num_invalid, self.num_images, self.num_scored_images],
                               self.boundary_intersection, self.boundary_union]).astype(np.int64)
        packed = torch.from_numpy(np.concatenate([flat, _pack_surface_counts(self)]))
        extra = torch.from_numpy(np.concatenate([[self.per_image_sum, self.per_image_dice_sum],
                                                 self.surface_sums.reshape(-1)]))
        backend = dist.get_backend(group)
        if backend == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
            packed, extra = packed.to(device), extra.to(device)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        dist.all_reduce(extra, op=dist.ReduceOp.SUM, group=group)
        packed = packed.cpu().numpy()
        self.confusion = packed[: k * k].reshape(k, k).copy()
        self.num_invalid, self.num_images, self.num_scored_images = (int(v) for v in packed[k * k: k * k + 3])
        self.boundary_intersection = packed[k * k + 3: k * k + 3 + k].copy()
        self.boundary_union = packed[k * k + 3 + k: k * k + 3 + 2 * k].copy()
        extra = extra.cpu().numpy()
        self.per_image_sum, self.per_image_dice_sum = float(extra[0]), float(extra[1])
        _unpack_surface(self, packed[k * k + 3 + 2 * k:], extra[2:])
        self._local_state = local
        return self

    def unsync(self):
        """Put back this process's own counts after ``sync`` (a no-op when not synced)."""
        if self._local_state is not None:
            local, self._local_state = self._local_state, None
            self.load_state_dict(local)
        return self


def _checked_counts(state, key, shape):
    """``state[key]`` as a new int64 array of ``shape``: present, and finite non-negative integers."""
    if key not in state:
        raise ValueError(f"state has no {key!r}: pass a dict from SegMetrics.state_dict()")
    value = state[key]
    try:
        arr = np.asarray(_to_numpy(value))
    except Exception:
        arr = np.asarray(None)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"state's {key!r} must hold integer counts, got {type(value).__name__} of dtype "
                         f"{arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"state's {key!r} has shape {arr.shape}, expected {shape}")
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise ValueError(f"state's {key!r} holds NaN or infinite values: it is not a count")
        if (arr != np.round(arr)).any() or np.abs(arr).max(initial=0) >= 2.0**63:
            raise ValueError(f"state's {key!r} holds fractional or out-of-range values: it is not a count")
    elif arr.dtype == np.uint64 and arr.size and int(arr.max()) >= 2**63:
        raise ValueError(f"state's {key!r} holds out-of-range values (beyond int64): it is not a count")
    if (arr < 0).any():
        raise ValueError(f"state's {key!r} holds negative values (smallest {arr.min()}): it is not a count")
    return np.array(arr, np.int64)


def _checked_number(state, key):
    """``state[key]`` as a finite, non-negative float."""
    if key not in state:
        raise ValueError(f"state has no {key!r}: pass a dict from SegMetrics.state_dict()")
    try:
        value = float(_to_numpy(state[key]))
    except (TypeError, ValueError):
        raise ValueError(f"state's {key!r} must be a number, got {type(state[key]).__name__}") from None
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"state's {key!r} must be a finite non-negative number, got {value}")
    return value


# ------------------------------------------------------------------------------------------------ surface state

def _spatial_ndim(spatial_ndim, spacing):
    """SegMetrics' case rule: ``spatial_ndim`` (2 or 3), by default the length of a 3-long spacing, else 2."""
    from .surface import _check_spacing

    length = None
    if spacing is not None and not is_torch_tensor(spacing) and np.ndim(spacing) == 1:
        length = len(spacing)
    elif is_torch_tensor(spacing) and spacing.ndim == 1:
        length = int(spacing.shape[0])
    if spatial_ndim is None:
        spatial_ndim = 3 if length == 3 else 2
    elif isinstance(spatial_ndim, bool) or spatial_ndim not in (2, 3):
        raise ValueError(f"spatial_ndim must be 2 (cases are images) or 3 (volumes), got {spatial_ndim!r}")
    if length is not None and length != spatial_ndim:
        raise ValueError(f"spacing has {length} entries but spatial_ndim is {spatial_ndim}: one entry per spatial axis")
    if spacing is not None:
        _check_spacing(spacing, int(spatial_ndim))
    return int(spatial_ndim)


def _surface_spacing(spacing, spatial_ndim):
    """A voxel spacing of ``spatial_ndim`` entries (a number or None: the same along every axis)."""
    from .surface import _check_spacing

    return _check_spacing(spacing, spatial_ndim)


def _volume_labels(pred, target, num_classes):
    """Volume scores with their class axis first ((C, D, H, W), or (B, C, D, H, W) for a batch) as labels;
    labels as they are. (``prepare_labels`` reads 4-D scores as a batch of images.) Scores must have
    ``num_classes`` channels: an argmax over any other count would count labels silently wrong."""
    if pred is None or target is None or not hasattr(pred, "ndim") or not hasattr(target, "ndim"):
        return pred, target
    floating = pred.is_floating_point() if is_torch_tensor(pred) else np.asarray(pred).dtype.kind == "f"
    if floating and pred.ndim == target.ndim + 1 and target.ndim in (3, 4):
        axis = 0 if target.ndim == 3 else 1
        if pred.shape[axis] == 1:  # an argmax over one channel labels everything 0
            raise ValueError("pred has one class channel (a sigmoid model's binary scores?): pass labels instead, "
                             "(pred > 0) for logits or (pred > 0.5) for probabilities, as integers, squeezing the "
                             "channel axis")
        if pred.shape[axis] != num_classes:
            raise ValueError(f"pred scores have {pred.shape[axis]} classes on axis {axis} (shape "
                             f"{tuple(pred.shape)}), the metric {num_classes}: pass scores with the class axis "
                             f"{'first' if axis == 0 else 'second'} and num_classes channels, or labels")
        spatial = tuple(pred.shape[:axis]) + tuple(pred.shape[axis + 1:])
        if spatial != tuple(target.shape):
            raise ValueError(f"pred scores of shape {tuple(pred.shape)} (classes on axis {axis}) and target of "
                             f"shape {tuple(target.shape)} must cover the same voxels: {spatial} vs "
                             f"{tuple(target.shape)}")
        pred = pred.argmax(axis) if is_torch_tensor(pred) else np.argmax(pred, axis=axis)
    return pred, target


def _check_tolerance(tolerance, k):
    from .surface import _check_tolerance as check

    return check(tolerance, k)


def _surface_cases(pred, target, spatial_dims):
    """The (pred, target) cases of an update: the arrays themselves, or their first axis as a batch."""
    if is_torch_tensor(pred):
        pred, target = pred.detach().cpu().numpy(), target.detach().cpu().numpy()
    if target.ndim == spatial_dims:
        return [(pred, target)]
    if target.ndim == spatial_dims + 1:
        return [(pred[i], target[i]) for i in range(target.shape[0])]
    what = "volume (D, H, W)" if spatial_dims == 3 else "image (H, W)"
    raise ValueError(f"target of shape {tuple(target.shape)} is neither one {what} nor a batch of them: "
                     f"spatial_ndim={spatial_dims} spatial axes (set by spatial_ndim= or the length of spacing)")


def _surface_state(state, k):
    """(sums, counts, num_cases) of a state dict, validated (an older state without them: zeros)."""
    sums = np.array(_to_numpy(state.get("surface_sums", np.zeros((3, k)))), np.float64)
    counts = np.asarray(_to_numpy(state.get("surface_counts", np.zeros((3, k), np.int64))))
    num_cases = state.get("num_cases", 0)
    for name, value in (("surface_sums", sums), ("surface_counts", counts)):
        if value.shape != (3, k):
            raise ValueError(f"state has {name} of shape {value.shape}, expected {(3, k)}")
    if np.isnan(sums).any() or (sums < 0).any():
        raise ValueError("state has surface_sums with NaN or negative entries")
    if counts.dtype.kind not in "iu" or (counts < 0).any():
        raise ValueError(f"state has surface_counts that are not non-negative integers (dtype {counts.dtype})")
    num_cases = _plain(num_cases)
    if isinstance(num_cases, bool) or not isinstance(num_cases, (int, np.integer)) or num_cases < 0:
        raise ValueError(f"state has num_cases {num_cases!r}, expected a non-negative integer")
    return sums, counts.astype(np.int64), int(num_cases)


def _pack_surface_counts(metrics):
    return np.concatenate([metrics.surface_counts.reshape(-1), [metrics.num_cases]]).astype(np.int64)


def _unpack_surface(metrics, counts, sums):
    k = metrics.num_classes
    metrics.surface_counts = np.asarray(counts[: 3 * k], np.int64).reshape(3, k).copy()
    metrics.num_cases = int(counts[3 * k])
    metrics.surface_sums = np.asarray(sums, np.float64).reshape(3, k).copy()



def _to_numpy(cm):
    return cm.detach().cpu().numpy() if is_torch_tensor(cm) else np.asarray(cm)
