"""Evaluation over a dataset and DeepLab-style CRF parameter search."""
from __future__ import annotations

import itertools
import sys
from collections.abc import Mapping

import numpy as np

from ._validation import is_torch_tensor
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


def _is_dataloader(dataset):
    # (getattr: torch may be half-imported by another thread, and then no DataLoader exists yet)
    loader_type = getattr(getattr(getattr(sys.modules.get("torch"), "utils", None), "data", None), "DataLoader", None)
    return loader_type is not None and isinstance(dataset, loader_type)


def _yields_batches(dataset):
    """A DataLoader that collates (batch_size or batch_sampler set): its items are batches, whatever their ndim."""
    return _is_dataloader(dataset) and dataset.batch_sampler is not None


def _distributed_sampler(dataset):
    """The DistributedSampler behind a DataLoader, or None."""
    if not _is_dataloader(dataset):
        return None
    from torch.utils.data import DistributedSampler

    sampler = dataset.batch_sampler.sampler if dataset.batch_sampler is not None else dataset.sampler
    return sampler if isinstance(sampler, DistributedSampler) else None


def _is_batch(image, target, spatial_ndim):
    """Images: a 4-D image array is a batch. Volumes (whose images may be 4-D, (M, D, H, W)): a 4-D target is."""
    if spatial_ndim == 3:
        return (is_torch_tensor(target) or isinstance(target, np.ndarray)) and target.ndim == 4
    return (is_torch_tensor(image) or isinstance(image, np.ndarray)) and image.ndim == 4


def _pairs(sample, image_key, target_key, batched, spatial_ndim=2):
    """The (image, target) pairs of one item a dataset or DataLoader yields: a pair, a dict, or a batch of either.

    ``batched``: the item is a batch (from a collating DataLoader) even if its images are not 4-D.
    """
    if isinstance(sample, Mapping):
        missing = [key for key in (image_key, target_key) if key not in sample]
        if missing:
            raise ValueError(f"a dataset sample has keys {list(sample)} but not {missing}: "
                             f"pass image_key= and target_key= (defaults 'image' and 'mask')")
        image, target = sample[image_key], sample[target_key]
    elif isinstance(sample, (tuple, list)) and len(sample) == 2:
        image, target = sample
    else:
        raise TypeError(f"each dataset item must be an (image, target) pair or a dict, got {type(sample).__name__}"
                        + (f" of length {len(sample)}" if isinstance(sample, (tuple, list)) else ""))
    if batched or _is_batch(image, target, spatial_ndim):
        # a DataLoader batch: (B, 3, H, W) images with (B, H, W) or (B, 1, H, W) targets; volumes (B, ..., D, H, W)
        # with (B, D, H, W) or (B, 1, D, H, W) targets
        if len(target) != len(image):
            raise ValueError(f"a batch of {len(image)} images came with {len(target)} targets")
        if getattr(target, "ndim", 0) == spatial_ndim + 2 and target.shape[1] == 1:
            target = target[:, 0]
        return list(zip(image, target))
    if isinstance(image, (tuple, list)):  # a collate_fn that keeps lists (images of different sizes)
        if len(image) != len(target):
            raise ValueError(f"a batch of {len(image)} images came with {len(target)} targets")
        return list(zip(image, target))
    return [(image, target)]


def evaluate(pipeline, dataset, *, num_classes, ignore_index=None, class_names=None, per_image=False,
             boundary=False, spatial_ndim=2, image_key="image", target_key="mask", progress=True):
    """Run ``pipeline`` over ``dataset`` and score it.

    Parameters
    ----------
    pipeline : callable
        A :class:`segpost.Pipeline` (batches go through its ``predict_batch``),
        or any callable from one image to an object with ``labels`` or to a
        label array.
    dataset : iterable
        What an eval loop iterates: a list or Dataset of (image, target) pairs,
        or a torch DataLoader of batches ((B, 3, H, W) images with (B, H, W)
        or (B, 1, H, W) targets, any batch size and ``num_workers``). Items may
        also be dicts (``image_key``, ``target_key``). Targets are integer
        label maps; images follow the pipeline's conventions (for Pipeline:
        integers 0..255, floats in [0, 1], not normalised).
    num_classes : int, keyword-only
    ignore_index, class_names, per_image, boundary : keyword-only
        As for :class:`segpost.SegMetrics`.
    spatial_ndim : {2, 3}, keyword-only, default 2
        What one case is (:class:`segpost.SegMetrics`' rule): 2, images; 3,
        volumes: each (D, H, W) target is one case (per-case means and
        Boundary IoU per volume), an item with a (B, D, H, W) target is a
        batch of B volumes, and the pipeline is called on each volume (e.g.
        ``lambda v: segpost.predict_volume(model, v, roi_size=...)``).
    image_key, target_key : str, keyword-only
        The entries of dict samples (default ``"image"`` and ``"mask"``, as
        albumentations names them).
    progress : bool, keyword-only
        A tqdm progress bar (over the items the dataset yields).

    Returns
    -------
    SegMetricsResult

    Notes
    -----
    Under ``torch.distributed`` every sample is counted exactly once:

    - a DataLoader whose sampler is a ``DistributedSampler`` is already
      sharded: each rank scores its own samples, and the few the sampler
      repeats to give every rank as many (its padding) are skipped;
    - anything else is iterated whole by every rank, and each rank scores
      every world_size-th item (rank, rank + world_size, ...).

    The counts are then summed with one all_reduce.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from segpost import Pipeline, evaluate
    >>> model = torch.nn.Conv2d(3, 2, 1)
    >>> data = [(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.int64)) for _ in range(4)]
    >>> loader = torch.utils.data.DataLoader(data, batch_size=3)    # batches of (3, 8, 8, 3) and (3, 8, 8)
    >>> int(evaluate(Pipeline(model), loader, num_classes=2, progress=False).confusion.sum())
    256

    Volumes, each one case:

    >>> from segpost import predict_volume
    >>> model3d = torch.nn.Conv3d(1, 2, 3, padding=1)
    >>> scans = [(np.zeros((8, 16, 16), np.float32), np.zeros((8, 16, 16), np.int64)) for _ in range(2)]
    >>> result = evaluate(lambda v: predict_volume(model3d, v, roi_size=8), scans, num_classes=2, per_image=True,
    ...                   spatial_ndim=3, progress=False)
    >>> result.num_images, result.spatial_ndim
    (2, 3)
    """
    from tqdm.auto import tqdm

    rank, world = _distributed()
    sampler = _distributed_sampler(dataset) if world > 1 else None
    metrics = SegMetrics(num_classes, ignore_index=ignore_index, class_names=class_names, per_image=per_image,
                         boundary=boundary, spatial_ndim=spatial_ndim)
    total = len(dataset) if hasattr(dataset, "__len__") else None
    if sampler is None and total is not None:
        total = len(range(rank, total, world))
    predict_batch = getattr(pipeline, "predict_batch", None)
    batched = _yields_batches(dataset)
    # A DistributedSampler pads its index list to num_replicas x its length by repeating the first indices,
    # then gives rank r the positions r, r + num_replicas, ...: rank r's n-th sample is padding when
    # n * num_replicas + r >= len(dataset).
    dataset_size = len(sampler.dataset) if sampler is not None and not sampler.drop_last else None
    position = 0
    with tqdm(total=total, disable=not progress or rank != 0, desc="evaluate", unit="item") as bar:
        for index, item in enumerate(dataset):
            if sampler is None and index % world != rank:
                continue
            pairs = _pairs(item, image_key, target_key, batched, metrics.spatial_ndim)
            if dataset_size is not None:  # n: this rank's sample count so far
                kept = [pair for n, pair in enumerate(pairs, start=position) if n * world + rank < dataset_size]
                position, pairs = position + len(pairs), kept
            if pairs:
                images = [image for image, _ in pairs]
                outputs = predict_batch(images) if predict_batch is not None else [pipeline(im) for im in images]
                for out, (_, target) in zip(outputs, pairs):
                    metrics.update(getattr(out, "labels", out), target)
            bar.update(1)
    return metrics.sync().compute()


def tune_crf(images, probs, targets, *, num_classes=None, grid=None, metric="miou", ignore_index=None, iterations=None,
             base=None, spacing=None, progress=True):
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
    spacing : sequence of float, keyword-only, optional
        Volumes: ``images`` are scans, ``probs`` (C, d, h, w) and ``targets``
        (D, H, W), each volume one case, and this is their voxel size (the
        kernels' units, :func:`segpost.crf_refine`).

    Returns
    -------
    best : CRFParams
    table : list of dict
        One row per setting with its fields and score, best first.

    Raises
    ------
    ValueError
        If the sequences are empty or differ in length, the metric is
        unknown, or the grid names a field CRFParams does not have.

    Notes
    -----
    Each crf_refine already uses all cores (``segpost.set_num_threads``).

    Examples
    --------
    >>> import numpy as np
    >>> from skimage import data
    >>> from segpost import tune_crf
    >>> image = data.astronaut()[:32, :32]
    >>> target = (image.mean(axis=2) > 100).astype(np.int64)
    >>> probs = np.stack([1 - target, target]).astype(np.float32) * 0.8 + 0.1   # a blurry model
    >>> best, table = tune_crf([image], [probs], [target], grid={"bi_weight": (3, 5)}, progress=False)
    >>> len(table), best.bi_weight in (3, 5)
    (2, True)
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
        metrics = SegMetrics(k, ignore_index=ignore_index, spatial_ndim=np.ndim(probs[0]) - 1)
        for image, p, target in zip(images, probs, targets):
            metrics.update(crf_refine(image, probs=p, params=params, iterations=iterations, spacing=spacing), target)
        result = metrics.compute()
        table.append({**dict(zip(names, values)), "score": getattr(result, metric)})
    table.sort(key=lambda row: -np.nan_to_num(row["score"], nan=-np.inf))
    best = base.replace(**{n: table[0][n] for n in names})
    return best, table
