"""Evaluation over a dataset and DeepLab-style CRF parameter search."""
from __future__ import annotations

import itertools

import numpy as np

from .crf import CRFParams, crf_refine
from .metrics import SegMetrics

__all__ = ["evaluate", "tune_crf", "DEEPLAB_CRF_GRID"]

#: DeepLab v2's search ranges: w1 in [3, 6], sigma_alpha in 30:10:100, sigma_beta in [3, 6].
DEEPLAB_CRF_GRID = {"bi_weight": (3, 4, 5, 6), "bi_xy": tuple(range(30, 101, 10)), "bi_rgb": (3, 4, 5, 6)}


def _distributed():
    try:
        import torch.distributed as dist
    except ImportError:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def evaluate(pipeline, dataset, *, num_classes, ignore_index=None, class_names=None, per_image=False, progress=True):
    """Run ``pipeline`` over ``dataset`` and score it.

    Parameters
    ----------
    pipeline : callable
        A :class:`segpost.Pipeline` (or any callable returning an object with
        ``labels``, or a label array).
    dataset : iterable of (image, target)
        Targets are (H, W) integer label maps.
    num_classes : int, keyword-only
    ignore_index, class_names, per_image : keyword-only
        As for :class:`segpost.SegMetrics`.
    progress : bool, keyword-only
        A tqdm progress bar.

    Returns
    -------
    SegMetricsResult

    Notes
    -----
    Under ``torch.distributed`` each rank takes every world_size-th sample
    (rank, rank + world_size, ...) itself, so no sample is counted twice (a
    DistributedSampler's padding duplicates never arise), and the confusion
    matrices are summed with one all_reduce.
    """
    from tqdm.auto import tqdm

    rank, world = _distributed()
    metrics = SegMetrics(num_classes, ignore_index=ignore_index, class_names=class_names, per_image=per_image)
    total = len(dataset) if hasattr(dataset, "__len__") else None
    shard_total = None if total is None else len(range(rank, total, world))
    bar = tqdm(total=shard_total, disable=not progress or rank != 0, desc="evaluate", unit="img")
    for index, sample in enumerate(dataset):
        if index % world != rank:
            continue
        image, target = sample
        out = pipeline(image)
        labels = getattr(out, "labels", out)
        metrics.update(labels, target)
        bar.update(1)
    bar.close()
    return metrics.sync().compute()


def tune_crf(images, probs, targets, *, num_classes=None, grid=None, metric="miou", ignore_index=None, iterations=None,
             base=None, progress=True):
    """Grid-search the appearance kernel's parameters on held-out images, as DeepLab did.

    Parameters
    ----------
    images : sequence of (H, W, 3) uint8 images
    probs : sequence of (C, H, W) (or coarser) softmax probabilities, one per image
    targets : sequence of (H, W) integer label maps
    num_classes : int, keyword-only, optional
        Defaults to C of the first probabilities.
    grid : dict of field -> values, keyword-only
        Any :class:`CRFParams` fields; default DeepLab v2's ranges
        (``bi_weight`` 3..6, ``bi_xy`` 30..100 step 10, ``bi_rgb`` 3..6: 128 settings).
    metric : {"miou", "pixel_accuracy", "mdice"}, keyword-only
    base : CRFParams, keyword-only
        Fields not in the grid (default DeepLab's).

    Returns
    -------
    best : CRFParams
    table : list of dict
        One row per setting with its fields and score, best first.

    Each crf_refine already uses all cores (segpost.set_num_threads).
    """
    from tqdm.auto import tqdm

    if not (len(images) == len(probs) == len(targets)) or len(images) == 0:
        raise ValueError("images, probs and targets must be non-empty sequences of the same length")
    if metric not in ("miou", "pixel_accuracy", "mdice"):
        raise ValueError(f"metric must be 'miou', 'pixel_accuracy' or 'mdice', got {metric!r}")
    grid = dict(DEEPLAB_CRF_GRID if grid is None else grid)
    fields = {f.name for f in CRFParams.__dataclass_fields__.values()}
    unknown = set(grid) - fields
    if unknown:
        raise ValueError(f"unknown CRF parameter(s) in grid: {sorted(unknown)}")
    base = CRFParams.coerce(base)
    k = int(num_classes if num_classes is not None else np.shape(probs[0])[0])
    names = list(grid)
    settings = list(itertools.product(*(grid[n] for n in names)))
    table = []
    for values in tqdm(settings, disable=not progress, desc="tune_crf", unit="setting"):
        params = base.replace(**dict(zip(names, values)))
        metrics = SegMetrics(k, ignore_index=ignore_index)
        for image, p, target in zip(images, probs, targets):
            metrics.update(crf_refine(image, probs=p, params=params, iterations=iterations), target)
        result = metrics.compute()
        table.append({**dict(zip(names, values)), "score": getattr(result, metric)})
    table.sort(key=lambda row: -np.nan_to_num(row["score"], nan=-np.inf))
    best = base.replace(**{n: table[0][n] for n in names})
    return best, table
