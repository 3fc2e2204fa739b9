"""Surface-distance metrics of label maps and volumes: Hausdorff distance (HD, HD95), average symmetric surface
distance, normalized surface Dice, with voxel spacing; MONAI's definitions.

For each class, the surface of a mask is ``mask XOR binary_erosion(mask)``
with the cross structuring element (4-connected in 2-D, 6 in 3-D) and the
image border counting as background; the distances from each surface voxel
of one map to the nearest surface voxel of the other are exact Euclidean
distances in physical units (``spacing``): found in a small ball around the
voxel, nearest offsets first, or else by a distance transform inside the
bounding box of the class's two surfaces or a k-d tree (docs/performance.md).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from concurrent.futures import wait

import numpy as np

from .._threads import get_num_threads
from .._validation import is_torch_tensor
from . import scores
from .boundary import _BoundaryResult
from .confusion import PARALLEL_THRESHOLD, _check_num_classes, _normalise_ignore, _pool, prepare_labels

__all__ = [
    "CaseMetricsResult", "HausdorffDistanceResult", "case_metrics", "SurfaceDistanceResult", "SurfaceDiceResult", "average_surface_distance",
    "hausdorff_distance", "surface_dice",
]


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class HausdorffDistanceResult(_BoundaryResult):
    """What ``hausdorff_distance`` returns.

    Attributes
    ----------
    distance : (K,) float64
        Per-class (percentile) Hausdorff distance in the units of ``spacing``;
        inf where one map has the class and the other not, NaN where neither
        has it or the class is excluded.
    mean : float
        Mean over the classes with a value (inf if any is inf).
    percentile : float or None
        The percentile taken of each direction's distances (None: the maximum).
    spacing : tuple of float
        The voxel spacing used, one entry per axis.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import hausdorff_distance
    >>> target = np.zeros((8, 8), int); target[2:6, 2:6] = 1
    >>> result = hausdorff_distance(target, target, 2)
    >>> result.distance.tolist(), result.as_dict()["spacing"]
    ([0.0, 0.0], (1.0, 1.0))
    """

    distance: np.ndarray
    mean: float
    percentile: float | None
    spacing: tuple


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class SurfaceDistanceResult(_BoundaryResult):
    """What ``average_surface_distance`` returns.

    Attributes
    ----------
    distance : (K,) float64
        Per-class average symmetric surface distance; inf where one map has
        the class and the other not, NaN where neither has it or the class is
        excluded.
    mean : float
        Mean over the classes with a value (inf if any is inf).
    spacing : tuple of float

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import average_surface_distance
    >>> target = np.zeros((8, 8), int); target[2:6, 2:6] = 1
    >>> average_surface_distance(target, target, 2).mean
    0.0
    """

    distance: np.ndarray
    mean: float
    spacing: tuple


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class SurfaceDiceResult(_BoundaryResult):
    """What ``surface_dice`` returns.

    Attributes
    ----------
    dice : (K,) float64
        Per-class normalized surface Dice in [0, 1]; 0 where one map has the
        class and the other not, NaN where neither has it or the class is
        excluded.
    mean : float
        Mean over the classes with a value.
    pred_matched, target_matched : (K,) int64
        Surface voxels of each map within ``tolerance`` of the other's surface.
    pred_surface, target_surface : (K,) int64
        Surface voxels of each map: ``dice = (pred_matched + target_matched)
        / (pred_surface + target_surface)``.
    tolerance : (K,) float64
        Each class's tolerance, in the units of ``spacing``.
    spacing : tuple of float

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import surface_dice
    >>> target = np.zeros((8, 8), int); target[2:6, 2:6] = 1
    >>> result = surface_dice(target, target, 2, tolerance=1)
    >>> result.dice.tolist(), result.target_surface.tolist()
    ([1.0, 1.0], [44, 12])
    """

    dice: np.ndarray
    mean: float
    pred_matched: np.ndarray
    target_matched: np.ndarray
    pred_surface: np.ndarray
    target_surface: np.ndarray
    tolerance: np.ndarray
    spacing: tuple


# ---------------------------------------------------------------------------------------------------------------
# Validation


def _case_labels(pred, target, ignore_index):
    """(pred, target) numpy integer label grids of one case (their own dtypes); voxels whose target is ignored are -1
    in both (then in a signed copy)."""
    if not is_torch_tensor(pred):
        pred = np.asarray(pred)
    if not is_torch_tensor(target):
        target = np.asarray(target)
    is_scores = pred.is_floating_point() if is_torch_tensor(pred) else pred.dtype.kind == "f"
    if is_scores and pred.ndim == target.ndim + 1:  # one case's (C, *grid) scores
        pred = pred.argmax(0) if is_torch_tensor(pred) else np.argmax(pred, axis=0)
    pred, target = prepare_labels(pred, target)
    if is_torch_tensor(pred):
        pred, target = pred.detach().cpu().numpy(), target.detach().cpu().numpy()
    pred, target = np.asarray(pred), np.asarray(target)
    if target.ndim < 2:
        raise ValueError(f"surface metrics take one (H, W) label map or (D, H, W) volume, got shape {target.shape}")
    if target.size == 0:
        raise ValueError(f"surface metrics need a non-empty label map, got shape {target.shape}")
    pred, target = (a.view(np.uint8) if a.dtype == np.bool_ else a for a in (pred, target))
    ignore = _normalise_ignore(ignore_index)
    if ignore:  # copies, with room for -1: the caller's arrays stay as they are
        ignored = np.isin(target, ignore)
        signed = [np.promote_types(a.dtype, np.int8) for a in (pred, target)]
        pred, target = (np.where(ignored, -1, a).astype(d if d.kind == "i" else np.int64, copy=False)
                        for a, d in zip((pred, target), signed))
    return pred, target


def _check_spacing(spacing, ndim):
    """The voxel spacing as a tuple of ``ndim`` positive finite floats (None: 1 along every axis)."""
    if spacing is None:
        return (1.0,) * ndim
    if is_torch_tensor(spacing):
        spacing = spacing.detach().cpu().numpy()
    values = np.asarray(spacing) if not isinstance(spacing, (str, bytes)) else np.asarray(None)
    if values.dtype.kind not in "iuf":
        raise TypeError(f"spacing must be a number or a sequence of {ndim} numbers, got {spacing!r}")
    if values.ndim > 1 or (values.ndim == 1 and values.size != ndim):
        raise ValueError(f"spacing must be a number or one number per axis ({ndim}), got {spacing!r}")
    values = np.broadcast_to(values.astype(np.float64), (ndim,))
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing must hold positive finite numbers, got {spacing!r}")
    return tuple(float(v) for v in values)


def _check_exclude(exclude_classes, k):
    out = []
    for c in exclude_classes:
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, (numbers.Integral, np.integer)) or not 0 <= c < k:
            raise ValueError(f"exclude_classes entry {c!r} is not a class index below {k}")
        out.append(int(c))
    return tuple(out)


def _check_percentile(percentile):
    if percentile is None:
        return None
    if isinstance(percentile, (bool, np.bool_)) or not isinstance(percentile, numbers.Real) \
            or not 0 < percentile <= 100:
        raise ValueError(f"percentile must be None or a number in (0, 100], got {percentile!r}")
    return float(percentile)


def _check_tolerance(tolerance, k):
    values = np.array(tolerance, np.float64) if not isinstance(tolerance, (bool, np.bool_)) else None
    if values is None or values.ndim > 1 or (values.ndim == 1 and values.size != k):
        raise ValueError(f"tolerance must be a number or one number per class ({k}), got {tolerance!r}")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"tolerance must be finite and >= 0, got {tolerance!r}")
    return np.broadcast_to(values, (k,)).copy()


# ---------------------------------------------------------------------------------------------------------------
# Distances


@dataclasses.dataclass(frozen=True)
class _ClassDistances:
    """One class's directed surface distances; a direction from an empty surface is empty, to one all inf."""

    pred_to_target: np.ndarray
    target_to_pred: np.ndarray

    @property
    def empty(self):
        return self.pred_to_target.size == 0 and self.target_to_pred.size == 0


def _to_surface(from_count, to_count, distances):
    """A direction's distances: ``distances()`` when both surfaces exist, all inf when the target one is empty."""
    if from_count == 0:
        return np.empty(0)
    if to_count == 0:
        return np.full(from_count, np.inf)
    return distances()


def _reference_distances(pred, target, k, spacing, classes):
    """The plain path, any number of axes: per class, scipy's erosion and its exact Euclidean distance transform."""
    from scipy import ndimage

    out = {}
    for c in classes:
        p, t = pred == c, target == c
        sp = p & ~ndimage.binary_erosion(p, border_value=0)
        st = t & ~ndimage.binary_erosion(t, border_value=0)
        if sp.any() or st.any():
            box = tuple(slice(idx.min(), idx.max() + 1) for idx in np.nonzero(sp | st))
            sp, st = sp[box], st[box]
        out[c] = _ClassDistances(
            _to_surface(sp.sum(), st.sum(), lambda: ndimage.distance_transform_edt(~st, sampling=spacing)[sp]),
            _to_surface(st.sum(), sp.sum(), lambda: ndimage.distance_transform_edt(~sp, sampling=spacing)[st]))
    return out


def _distances_to(site_labels, query_labels, c, count, steps):
    """Distances from each of the ``count`` voxels where ``query_labels == c`` to the nearest where
    ``site_labels == c`` (3-D crops; C order).

    Separable and exact: the nearest site along the last axis, then the lower
    envelope of parabolas along the middle and first axes; the last of those
    passes runs only on lines that hold a query voxel.
    """
    from ._kernels import distances_at, lower_envelope_pass, squared_distance_lines

    g = squared_distance_lines(site_labels, c, steps[2], np.empty(site_labels.shape, np.float64))
    passes = [axis for axis in (1, 0) if g.shape[axis] > 1]
    for n, axis in enumerate(passes):
        lower_envelope_pass(g, axis, steps[axis], query_labels, c, n == len(passes) - 1)
    return distances_at(g, query_labels, c, count)


def _nearest_by_tree(site_points, query_points, steps):
    """Distances from each query voxel to the nearest site voxel through a k-d tree of the sites.

    The tree finds the nearest site in scaled coordinates; the distance is
    then recomputed from the integer offsets in the order the distance
    transform adds its passes, so that both paths give the same float64
    numbers (scaled coordinates would round differently: 3 x 0.8 - 2 x 0.8
    is not 0.8).
    """
    from scipy.spatial import cKDTree

    scale = np.asarray(steps, np.float64)
    _, nearest = cKDTree(site_points * scale, leafsize=32).query(query_points * scale, k=1)
    delta = (query_points - site_points[nearest]) * scale
    return np.sqrt(delta[:, 0] ** 2 + (delta[:, 1] ** 2 + delta[:, 2] ** 2))


_BALL_VOXELS = 3  # the ball's radius, in voxels of the coarsest axis


@functools.lru_cache(maxsize=16)
def _ball(steps):
    """Every integer offset within _BALL_VOXELS coarsest voxels, sorted by distance: (offsets (M, 3), distances).

    Distances are computed as everywhere else in this module (the first axis'
    term added last), so a distance found here equals the tree's and the
    transform's for the same pair of voxels.
    """
    scale = np.asarray(steps, np.float64)
    radius = _BALL_VOXELS * scale.max()
    reach = [int(np.floor(radius / s)) for s in scale]
    grids = np.meshgrid(*(np.arange(-r, r + 1) for r in reach), indexing="ij")
    offsets = np.stack([g.reshape(-1) for g in grids], axis=1)
    delta = offsets * scale
    distance = np.sqrt(delta[:, 0] ** 2 + (delta[:, 1] ** 2 + delta[:, 2] ** 2))
    keep = distance <= radius
    order = np.argsort(distance[keep], kind="stable")
    return np.ascontiguousarray(offsets[keep][order]), distance[keep][order]


def _prefer_tree(num_queries, num_sites, box_voxels):
    """Whether a k-d tree beats the distance transform for one direction: scattered surfaces in a large box.

    The transform costs about 15 ns per voxel of the box, the tree about
    30 ns per point and tree level (measured on the 2-core development
    machine, docs/performance.md); both are exact, so the choice changes
    only the time.
    """
    return 2 * (num_queries + num_sites) * np.log2(num_sites + 2) < box_voxels


def _on_both_maps(parallel, kernel, first, second):
    """[kernel(*first), kernel(*second)]: the second on the pool while this thread runs the first, if parallel."""
    if not parallel:
        return [kernel(*first), kernel(*second)]
    other = _pool(1).submit(kernel, *second)
    try:
        result = kernel(*first)
    finally:
        wait([other])  # never return (or raise) while the pool still reads the arrays
    return [result, other.result()]


def _fast_distances(pred, target, k, spacing, classes, force=None):
    """The fast path for 2-D and 3-D grids: every class's surfaces in one pass; then per class and direction
    each surface voxel looks for the other surface in a small ball around it, nearest offsets first, and
    the voxels that find none there get an exact distance transform inside the class's bounding box or a
    k-d tree of the other surface, whichever is cheaper for them (``_prefer_tree``). ``force`` ("tree" or
    "transform") measures every voxel one of those two ways (for the tests).

    Equal to ``_reference_distances`` (tests/test_surface_metrics.py holds
    them so). Classes and directions run on segpost's thread pool (the
    kernels and the tree release the GIL).
    """
    from ._kernels import class_surfaces, surface_points

    grid = pred.ndim == 3
    shape3 = pred.shape if grid else (1, *pred.shape)
    steps = spacing if grid else (1.0, *spacing)
    dtype = np.int8 if k <= 127 else (np.int16 if k <= 32767 else np.int32)
    surfaces = [np.empty(shape3, dtype) for _ in (pred, target)]
    parallel = get_num_threads() > 1 and pred.size >= PARALLEL_THRESHOLD
    found_surfaces = _on_both_maps(parallel, class_surfaces, (pred.reshape(shape3), k, grid, surfaces[0]),
                                   (target.reshape(shape3), k, grid, surfaces[1]))
    boxes, counts = [b for b, _ in found_surfaces], [c for _, c in found_surfaces]

    crops = {}
    for c in classes:
        lo = np.minimum(boxes[0][c, 0::2], boxes[1][c, 0::2])
        hi = np.maximum(boxes[0][c, 1::2], boxes[1][c, 1::2])
        crops[c] = tuple(slice(a, b) for a, b in zip(lo, hi))
    points = None if force == "transform" else \
        _on_both_maps(parallel, surface_points, (surfaces[0], counts[0]), (surfaces[1], counts[1]))

    def class_points(m, c):
        found, at = points[m]
        return found[at[c]:at[c + 1]]

    def whole_direction(c, source, which=None):
        """Distances of the class's query voxels (those at ``which``, or all) by the transform of the class's
        box or by the tree, whichever is cheaper for them."""
        crop = crops[c]
        num_queries = counts[source][c] if which is None else which.size
        box_voxels = np.prod([s.stop - s.start for s in crop])
        if force == "transform" or (force != "tree" and not _prefer_tree(num_queries, counts[1 - source][c],
                                                                          box_voxels)):
            found = _distances_to(surfaces[1 - source][crop], surfaces[source][crop], c, counts[source][c], steps)
            return found if which is None else found[which]
        queries = class_points(source, c)
        return _nearest_by_tree(class_points(1 - source, c), queries if which is None else queries[which], steps)

    def directed(c, source):
        if force is not None:
            return whole_direction(c, source)
        from ._kernels import nearest_in_ball

        offsets, offset_distances = _ball(steps)
        queries = class_points(source, c)
        found = nearest_in_ball(surfaces[1 - source], c, queries, offsets, offset_distances, np.empty(len(queries)))
        farther = np.flatnonzero(found < 0)  # no site within the ball
        if farther.size:
            found[farther] = whole_direction(c, source, farther)
        return found

    tasks = [(c, source) for c in classes for source in (0, 1) if counts[source][c] and counts[1 - source][c]]
    threads = min(get_num_threads(), len(tasks))
    if threads > 1:
        futures = {task: _pool(threads).submit(directed, *task) for task in tasks}
        wait(futures.values())
        found = {task: future.result() for task, future in futures.items()}
    else:
        found = {task: directed(*task) for task in tasks}

    def side(c, source):
        return _to_surface(counts[source][c], counts[1 - source][c], lambda: found[(c, source)])

    return {c: _ClassDistances(side(c, 0), side(c, 1)) for c in classes}


def _class_distances(pred, target, k, spacing, exclude_classes, *, path="fast"):
    """Each non-excluded class's directed surface distances (the one home of the definition).

    ``path``: "fast" (2-D and 3-D; others take the reference path), "reference", or, for the tests, "transform"
    or "tree" to measure every voxel of the fast path one of those ways.
    """
    classes = [c for c in range(k) if c not in exclude_classes]
    if path != "reference" and pred.ndim in (2, 3):
        return _fast_distances(pred, target, k, spacing, classes, force=None if path == "fast" else path)
    return _reference_distances(pred, target, k, spacing, classes)


def _directed_hausdorff(distances, percentile):
    if distances.size and np.isinf(distances[0]):
        return np.inf  # a surface to an empty one (all inf: the percentile would be inf - inf)
    return float(distances.max() if percentile is None else np.percentile(distances, percentile))


def _hausdorff(d, percentile):
    """MONAI's (percentile) Hausdorff distance of one class: the larger of the two directions' values."""
    if d.empty:
        return np.nan
    return max(_directed_hausdorff(x, percentile) for x in (d.pred_to_target, d.target_to_pred) if x.size)


def _average(d):
    """MONAI's symmetric average surface distance: the mean of both directions' distances together."""
    return np.nan if d.empty else float(np.concatenate([d.pred_to_target, d.target_to_pred]).mean())


def _per_class(k, found, score):
    values = np.full(k, np.nan)
    for c, d in found.items():
        values[c] = score(d)
    return values


# ---------------------------------------------------------------------------------------------------------------
# Public functions

def hausdorff_distance(pred, target, num_classes, *, percentile=None, spacing=None, ignore_index=None,
                       exclude_classes=()):
    """Per-class Hausdorff distance, or its percentile (HD95), between two label maps or volumes: MONAI's definition.

    For each class, the distances from every surface voxel of the prediction
    to the nearest surface voxel of the target, and the other way round; each
    direction's maximum (or ``percentile``, linearly interpolated as
    ``torch.quantile`` and ``np.percentile``), and the larger of the two.
    Equal to MONAI's ``compute_hausdorff_distance(one_hot_pred, one_hot_target,
    include_background=True, percentile=..., spacing=...)`` for every class
    with both surfaces or neither (MONAI rounds to float32). Where one map has
    the class and the other not the distance is inf; MONAI gives inf for HD
    but NaN for a percentile (``torch.quantile`` of infinities), which its
    mean then skips: the missed class would vanish from the average.

    Parameters
    ----------
    pred, target : (H, W) or (D, H, W) integer arrays or tensors
        One case's label maps (any number of axes >= 2; 2-D and 3-D take the
        fast path). ``pred`` may also be one case's float scores with a
        leading class axis, (C, H, W) or (C, D, H, W): they are argmaxed.
    num_classes : int
    spacing : float or sequence of float, keyword-only, optional
        The voxel size along each axis (e.g. from a NIfTI header), the units of
        every distance; default 1 along every axis.
    ignore_index : int or sequence of int, keyword-only, optional
        Voxels whose target holds one of these belong to no class in either
        map (their neighbours become surface), as MONAI's ``ignore_index`` in
        ``compute_surface_dice``.
    exclude_classes : sequence of int, keyword-only
        Classes not computed (NaN) and left out of the mean, e.g. ``(0,)``
        for the background, as MONAI's ``include_background=False``.
    percentile : float, keyword-only, optional
        In (0, 100]; None takes the maximum (the Hausdorff distance).

    Returns
    -------
    HausdorffDistanceResult
        ``.distance`` per class, ``.mean`` over classes.

    Raises
    ------
    ValueError, TypeError
        On shapes that differ or have fewer than two axes, a bad spacing,
        percentile or class index.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import hausdorff_distance
    >>> target = np.zeros((32, 32), int); target[8:24, 8:24] = 1
    >>> pred = np.zeros((32, 32), int); pred[8:24, 10:26] = 1          # 2 pixels to the right
    >>> hausdorff_distance(pred, target, 2, exclude_classes=(0,)).distance.tolist()
    [nan, 2.0]
    >>> float(hausdorff_distance(pred, target, 2, spacing=(1.0, 0.5), percentile=95).distance[1])
    1.0
    """
    k = _check_num_classes(num_classes)
    percentile = _check_percentile(percentile)
    pred, target = _case_labels(pred, target, ignore_index)
    spacing = _check_spacing(spacing, target.ndim)
    exclude = _check_exclude(exclude_classes, k)
    found = _class_distances(pred, target, k, spacing, exclude)
    values = _per_class(k, found, lambda d: _hausdorff(d, percentile))
    return HausdorffDistanceResult(values, scores.mean_score(values), percentile, spacing)


def average_surface_distance(pred, target, num_classes, *, spacing=None, ignore_index=None, exclude_classes=()):
    """Per-class average symmetric surface distance (ASSD): MONAI's ``symmetric=True`` definition.

    For each class, the mean of the distances from every surface voxel of
    each map to the nearest surface voxel of the other, both directions
    pooled (a map with more surface voxels weighs more). Equal to MONAI's
    ``compute_average_surface_distance(..., include_background=True,
    symmetric=True, spacing=...)`` (which rounds to float32).

    Parameters
    ----------
    pred, target : (H, W) or (D, H, W) integer arrays or tensors
        One case's label maps (any number of axes >= 2; 2-D and 3-D take the
        fast path). ``pred`` may also be one case's float scores with a
        leading class axis, (C, H, W) or (C, D, H, W): they are argmaxed.
    num_classes : int
    spacing : float or sequence of float, keyword-only, optional
        The voxel size along each axis (e.g. from a NIfTI header), the units of
        every distance; default 1 along every axis.
    ignore_index : int or sequence of int, keyword-only, optional
        Voxels whose target holds one of these belong to no class in either
        map (their neighbours become surface), as MONAI's ``ignore_index`` in
        ``compute_surface_dice``.
    exclude_classes : sequence of int, keyword-only
        Classes not computed (NaN) and left out of the mean, e.g. ``(0,)``
        for the background, as MONAI's ``include_background=False``.

    Returns
    -------
    SurfaceDistanceResult
        ``.distance`` per class, ``.mean`` over classes.

    Raises
    ------
    ValueError, TypeError
        On shapes that differ or have fewer than two axes, a bad spacing or class index.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import average_surface_distance
    >>> target = np.zeros((32, 32), int); target[8:24, 8:24] = 1
    >>> pred = np.zeros((32, 32), int); pred[8:24, 9:25] = 1           # 1 pixel to the right
    >>> print(np.round(average_surface_distance(pred, target, 2).distance, 4))
    [0.1809 0.5   ]
    """
    k = _check_num_classes(num_classes)
    pred, target = _case_labels(pred, target, ignore_index)
    spacing = _check_spacing(spacing, target.ndim)
    exclude = _check_exclude(exclude_classes, k)
    values = _per_class(k, _class_distances(pred, target, k, spacing, exclude), _average)
    return SurfaceDistanceResult(values, scores.mean_score(values), spacing)


def _surface_dice_counts(found, k, tolerance):
    """(pred_matched, target_matched, pred_surface, target_surface) per class: (K,) int64 each."""
    counts = np.zeros((4, k), np.int64)
    for c, d in found.items():
        counts[:, c] = (np.count_nonzero(d.pred_to_target <= tolerance[c]),
                        np.count_nonzero(d.target_to_pred <= tolerance[c]),
                        d.pred_to_target.size, d.target_to_pred.size)
    return counts


def _surface_dice_from_counts(pred_matched, target_matched, pred_surface, target_surface):
    """Normalized surface Dice from surface counts: (matched both ways) / (surface voxels both maps), NaN where none."""
    matched = np.asarray(pred_matched, np.int64) + np.asarray(target_matched, np.int64)
    total = np.asarray(pred_surface, np.int64) + np.asarray(target_surface, np.int64)
    return scores._ratio(matched, total, total > 0, "nan")


def surface_dice(pred, target, num_classes, *, tolerance, spacing=None, ignore_index=None, exclude_classes=()):
    """Per-class normalized surface Dice (NSD) at a tolerance: MONAI's ``compute_surface_dice`` definition.

    For each class, the surface voxels of both maps within ``tolerance`` of
    the other map's surface, over all surface voxels of both maps (Nikolov
    et al. 2021, counting voxels). Equal to MONAI's
    ``compute_surface_dice(..., class_thresholds, include_background=True,
    spacing=...)``, with one difference at exact ties: MONAI compares
    distances rounded to float32 with the tolerance, segpost the float64
    distances. 0 where one map has the class and the other not.

    Parameters
    ----------
    pred, target : (H, W) or (D, H, W) integer arrays or tensors
        One case's label maps (any number of axes >= 2; 2-D and 3-D take the
        fast path). ``pred`` may also be one case's float scores with a
        leading class axis, (C, H, W) or (C, D, H, W): they are argmaxed.
    num_classes : int
    spacing : float or sequence of float, keyword-only, optional
        The voxel size along each axis (e.g. from a NIfTI header), the units of
        every distance; default 1 along every axis.
    ignore_index : int or sequence of int, keyword-only, optional
        Voxels whose target holds one of these belong to no class in either
        map (their neighbours become surface), as MONAI's ``ignore_index`` in
        ``compute_surface_dice``.
    exclude_classes : sequence of int, keyword-only
        Classes not computed (NaN) and left out of the mean, e.g. ``(0,)``
        for the background, as MONAI's ``include_background=False``.
    tolerance : float or (K,) sequence of float, keyword-only
        The accepted deviation, >= 0, in the units of ``spacing`` (one value
        for all classes or one per class).

    Returns
    -------
    SurfaceDiceResult
        ``.dice`` per class, ``.mean`` over classes, and the counts behind them.

    Raises
    ------
    ValueError, TypeError
        On shapes that differ or have fewer than two axes, a bad spacing,
        tolerance or class index.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import surface_dice
    >>> target = np.zeros((32, 32), int); target[8:24, 8:24] = 1
    >>> pred = np.zeros((32, 32), int); pred[8:24, 10:26] = 1          # 2 pixels to the right
    >>> surface_dice(pred, target, 2, tolerance=2).dice.tolist()
    [1.0, 1.0]
    >>> result = surface_dice(pred, target, 2, tolerance=1, exclude_classes=(0,))
    >>> float(result.dice[1]), int(result.pred_matched[1]), int(result.pred_surface[1])
    (0.5333333333333333, 32, 60)
    """
    k = _check_num_classes(num_classes)
    tol = _check_tolerance(tolerance, k)
    pred, target = _case_labels(pred, target, ignore_index)
    spacing = _check_spacing(spacing, target.ndim)
    exclude = _check_exclude(exclude_classes, k)
    counts = _surface_dice_counts(_class_distances(pred, target, k, spacing, exclude), k, tol)
    values = _surface_dice_from_counts(*counts)
    values[list(exclude)] = np.nan
    return SurfaceDiceResult(values, scores.mean_score(values), *counts, tol, spacing)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class CaseMetricsResult(_BoundaryResult):
    """What ``case_metrics`` returns: one case's per-class overlap and surface metrics.

    Attributes
    ----------
    dice, iou : (K,) float64
        Overlap of the case (NaN for a class in neither map).
    hd : (K,) float64
        The ``percentile`` Hausdorff distance (HD95 by default).
    assd : (K,) float64
        The average symmetric surface distance.
    nsd : (K,) float64
        The normalized surface Dice at ``tolerance``.
    percentile : float or None
    tolerance : (K,) float64
    spacing : tuple of float

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import case_metrics
    >>> target = np.zeros((8, 8), int); target[2:6, 2:6] = 1
    >>> result = case_metrics(target, target, 2)
    >>> result.rows("case_0", ["background", "organ"])[1]
    {'case': 'case_0', 'class': 'organ', 'dice': 1.0, 'iou': 1.0, 'hd95': 0.0, 'assd': 0.0, 'nsd': 1.0}
    """

    dice: np.ndarray
    iou: np.ndarray
    hd: np.ndarray
    assd: np.ndarray
    nsd: np.ndarray
    percentile: float | None
    tolerance: np.ndarray
    spacing: tuple

    @property
    def hd_name(self):
        """The Hausdorff column's name: ``hd`` or ``hd95`` (``hd50``, ...) with a percentile."""
        return "hd" if self.percentile is None else f"hd{self.percentile:g}"

    def rows(self, case, class_names=None):
        """One dict per class (case, class, dice, iou, hd95, assd, nsd), NaN as None: a per-case table's rows."""
        names = class_names if class_names is not None else [str(c) for c in range(self.dice.size)]

        def plain(x):
            return None if math.isnan(x) else float(x)

        return [{"case": case, "class": names[c], "dice": plain(self.dice[c]), "iou": plain(self.iou[c]),
                 self.hd_name: plain(self.hd[c]), "assd": plain(self.assd[c]), "nsd": plain(self.nsd[c])}
                for c in range(self.dice.size)]


def case_metrics(pred, target, num_classes, *, spacing=None, tolerance=1.0, percentile=95, ignore_index=None,
                 exclude_classes=()):
    """One case's Dice, IoU, HD95, ASSD and NSD per class, from one set of surface distances.

    The rows of a per-case table (nnU-Net's ``summary.json`` lists the same
    per case and class); ``SegMetrics(surface=True)`` averages them over
    cases. Each surface metric is the one of ``hausdorff_distance``,
    ``average_surface_distance`` and ``surface_dice``.

    Parameters
    ----------
    pred, target : (H, W) or (D, H, W) integer arrays or tensors
        One case's label maps (or ``pred`` as (C, H, W) or (C, D, H, W) scores).
    num_classes : int
    spacing : float or sequence of float, keyword-only, optional
        The voxel size along each axis; default 1.
    tolerance : float or (K,) sequence of float, keyword-only
        The surface Dice's tolerance, in the units of ``spacing``; default 1.
    percentile : float or None, keyword-only
        The Hausdorff distance's percentile (default 95; None: the maximum).
    ignore_index : int or sequence of int, keyword-only, optional
    exclude_classes : sequence of int, keyword-only
        Classes whose surface metrics are not computed (NaN), e.g. ``(0,)``.

    Returns
    -------
    CaseMetricsResult

    Raises
    ------
    ValueError, TypeError
        As ``hausdorff_distance`` and ``surface_dice``.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import case_metrics
    >>> target = np.zeros((4, 16, 16), np.uint8); target[1:3, 4:12, 4:12] = 1
    >>> pred = np.roll(target, 1, axis=2)
    >>> result = case_metrics(pred, target, 2, spacing=(3.0, 0.5, 0.5), exclude_classes=(0,))
    >>> float(result.dice[1]), float(result.hd[1]), float(result.nsd[1])
    (0.875, 0.5, 1.0)
    """
    from .confusion import confusion_matrix

    k = _check_num_classes(num_classes)
    percentile = _check_percentile(percentile)
    tol = _check_tolerance(tolerance, k)
    pred, target = _case_labels(pred, target, ignore_index)
    spacing = _check_spacing(spacing, target.ndim)
    exclude = _check_exclude(exclude_classes, k)
    cm = np.asarray(confusion_matrix(pred, target, k, on_invalid="ignore"), np.int64)  # ignored voxels are -1 here
    found = _class_distances(pred, target, k, spacing, exclude)
    nsd = _surface_dice_from_counts(*_surface_dice_counts(found, k, tol))
    nsd[list(exclude)] = np.nan
    return CaseMetricsResult(scores.dice(cm), scores.iou(cm), _per_class(k, found, lambda d: _hausdorff(d, percentile)),
                             _per_class(k, found, _average), nsd, percentile, tol, spacing)
