"""Surface-distance metrics against a brute-force float64 oracle and against MONAI itself.

MONAI 1.6.1 rounds every surface distance to float32 (``get_surface_distance``
returns float32) and takes ``torch.quantile`` and the mean in float32: against
MONAI the tolerance is float32's (relative 2e-6). The oracle below has no
float32 step: against it, relative 1e-9.
"""
import math
import warnings

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from segpost.metrics import (
    HausdorffDistanceResult, SurfaceDiceResult, SurfaceDistanceResult, average_surface_distance, hausdorff_distance,
    surface_dice,
)
from segpost.metrics import surface as surface_module
from oracles import need

MONAI_RTOL = 2e-6  # MONAI's float32 distances and means
# torch.quantile works in float32 too: the position q (n - 1) with q = 0.95 rounded to float32 is off by up to
# n float32 steps, and the interpolation a + w (b - a) adds a few steps of b (0.05 between 0 and 1 came out
# 0.0499992; 0.15 as 0.1499977 with 40 distances): bounded by (n + 8) float32 steps of the class's largest distance.
FLOAT32_STEP = float(np.finfo(np.float32).eps)
ORACLE_RTOL = 1e-9



# ------------------------------------------------------------------------------------------------ oracle


def brute_surface(mask):
    """Voxels of the mask with a face neighbour outside it or outside the image (written out, no scipy)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded.copy()
    for axis in range(mask.ndim):
        for shift in (1, -1):
            inner &= np.roll(padded, shift, axis=axis)
    return mask & ~inner[tuple(slice(1, -1) for _ in range(mask.ndim))]


def brute_directed(from_surface, to_surface, spacing):
    """Distance from each from-surface voxel to the nearest to-surface voxel, all pairs (inf when none)."""
    a, b = np.argwhere(from_surface).astype(np.float64), np.argwhere(to_surface).astype(np.float64)
    if len(a) == 0:
        return np.empty(0)
    if len(b) == 0:
        return np.full(len(a), np.inf)
    diff = (a[:, None, :] - b[None, :, :]) * np.asarray(spacing)
    return np.sqrt((diff ** 2).sum(-1)).min(axis=1)


def oracle(pred, target, k, spacing, ignore=()):
    """Per class: (pred->target distances, target->pred distances), MONAI's definition, in float64."""
    pred, target = np.array(pred, np.int64), np.array(target, np.int64)
    ignored = np.isin(target, ignore)
    pred[ignored] = -1
    target[ignored] = -1
    out = []
    for c in range(k):
        sp, st_ = brute_surface(pred == c), brute_surface(target == c)
        out.append((brute_directed(sp, st_, spacing), brute_directed(st_, sp, spacing)))
    return out


def oracle_hd(d, percentile):
    a, b = d
    if a.size == 0 and b.size == 0:
        return math.nan
    values = []
    for x in (a, b):
        if x.size:
            values.append(math.inf if np.isinf(x).any() else float(x.max() if percentile is None
                                                                      else np.percentile(x, percentile)))
    return max(values)


def oracle_assd(d):
    both = np.concatenate(d)
    return math.nan if both.size == 0 else float(both.mean())


def oracle_nsd(d, tolerance):
    a, b = d
    total = a.size + b.size
    return math.nan if total == 0 else (np.count_nonzero(a <= tolerance) + np.count_nonzero(b <= tolerance)) / total


def assert_close(actual, expected, rtol, atol=0.0):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert np.array_equal(np.isnan(actual), np.isnan(expected)), (actual, expected)
    assert np.array_equal(np.isposinf(actual), np.isposinf(expected)), (actual, expected)
    finite = np.isfinite(expected)
    atol = np.broadcast_to(atol, expected.shape)[finite]
    assert np.all(np.abs(actual[finite] - expected[finite]) <= atol + rtol * np.abs(expected[finite])), \
        (actual, expected)


def quantile_atol(pred, target, k, spacing):
    """MONAI's float32 interpolation error bound per class (see FLOAT32_STEP)."""
    largest = hausdorff_distance(pred, target, k, spacing=spacing).distance
    counts = surface_dice(pred, target, k, tolerance=0, spacing=spacing)
    n = np.maximum(counts.pred_surface, counts.target_surface)
    return (n + 8) * FLOAT32_STEP * np.where(np.isfinite(largest), largest, 0.0)


# ------------------------------------------------------------------------------------------------ strategies


@st.composite
def cases(draw, ndims=(2, 3), max_side=9, max_classes=4):
    """Two label maps of a small random shape, blocky (objects, thin lines, single voxels) or noisy, and a spacing."""
    ndim = draw(st.sampled_from(ndims))
    shape = tuple(draw(st.integers(1, max_side)) for _ in range(ndim))
    k = draw(st.integers(1, max_classes))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["noise", "blocks", "sparse"]))
    maps = []
    for _ in range(2):
        if kind == "noise":
            labels = rng.integers(0, k, shape)
        else:
            labels = np.zeros(shape, np.int64)
            for _ in range(rng.integers(0, 4)):  # boxes, some one voxel thick, some one voxel
                lo = [rng.integers(0, n) for n in shape]
                hi = [min(n, l + rng.integers(1, 4)) for l, n in zip(lo, shape)]
                labels[tuple(slice(a, b) for a, b in zip(lo, hi))] = rng.integers(0, k)
            if kind == "sparse":
                labels[rng.random(shape) < 0.05] = rng.integers(0, k)
        maps.append(labels)
    anisotropic = draw(st.booleans())
    spacing = tuple(draw(st.sampled_from([0.5, 0.8, 1.0, 1.5, 2.5, 0.37])) for _ in range(ndim)) \
        if anisotropic else None
    return maps[0], maps[1], k, spacing


def _spacing_or_ones(spacing, ndim):
    return spacing if spacing is not None else (1.0,) * ndim


# ------------------------------------------------------------------------------------------------ the oracle


@given(cases(), st.sampled_from([None, 95, 50, 100, 12.5]))
def test_hausdorff_distance_equals_the_brute_force_definition(case, percentile):
    pred, target, k, spacing = case
    expected = [oracle_hd(d, percentile) for d in oracle(pred, target, k, _spacing_or_ones(spacing, target.ndim))]
    result = hausdorff_distance(pred, target, k, percentile=percentile, spacing=spacing)
    assert_close(result.distance, expected, ORACLE_RTOL)
    assert result.percentile == (None if percentile is None else float(percentile))


@given(cases())
def test_average_surface_distance_equals_the_brute_force_definition(case):
    pred, target, k, spacing = case
    expected = [oracle_assd(d) for d in oracle(pred, target, k, _spacing_or_ones(spacing, target.ndim))]
    assert_close(average_surface_distance(pred, target, k, spacing=spacing).distance, expected, ORACLE_RTOL)


@given(cases(), st.floats(0, 4))
def test_surface_dice_equals_the_brute_force_definition(case, tolerance):
    pred, target, k, spacing = case
    found = oracle(pred, target, k, _spacing_or_ones(spacing, target.ndim))
    # A distance within rounding of the tolerance is a tie that float64 orderings may decide either way.
    assume(all(not np.any(np.isclose(x, tolerance, rtol=1e-9, atol=0)) for d in found for x in d))
    result = surface_dice(pred, target, k, tolerance=tolerance, spacing=spacing)
    assert_close(result.dice, [oracle_nsd(d, tolerance) for d in found], 1e-12)
    assert result.pred_surface.tolist() == [d[0].size for d in found]
    assert result.target_surface.tolist() == [d[1].size for d in found]


@given(cases(ndims=(2, 3, 4), max_side=6))
def test_fast_paths_equal_the_reference_path(case):
    """The tree and the transform (2-D, 3-D) against scipy's erosion and transform (any N-D)."""
    pred, target, k, spacing = case
    spacing = _spacing_or_ones(spacing, target.ndim)
    reference = surface_module._class_distances(pred, target, k, spacing, (), path="reference")
    expected = oracle(pred, target, k, spacing)
    for path in ("fast", "tree", "transform"):
        found = surface_module._class_distances(pred, target, k, spacing, (), path=path)
        for c in range(k):
            for mine, theirs, brute in zip((found[c].pred_to_target, found[c].target_to_pred),
                                           (reference[c].pred_to_target, reference[c].target_to_pred), expected[c]):
                # Each direction in C order of its voxels: equal one by one.
                np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=0)
                np.testing.assert_allclose(mine, brute, rtol=1e-12, atol=0)


@given(cases(ndims=(4,), max_side=4, max_classes=3))
def test_four_dimensional_grids_take_the_reference_path(case):
    pred, target, k, spacing = case
    expected = [oracle_hd(d, 95) for d in oracle(pred, target, k, _spacing_or_ones(spacing, 4))]
    assert_close(hausdorff_distance(pred, target, k, percentile=95, spacing=spacing).distance, expected,
                 ORACLE_RTOL)


def test_the_transform_and_the_tree_meet_on_a_volume_with_islands():
    """A blob with scattered false-positive islands: the bounding box spans the volume and the tree wins."""
    rng = np.random.default_rng(3)
    z, y, x = np.ogrid[:24, :40, :40]
    target = (((z - 12) / 8) ** 2 + ((y - 20) / 12) ** 2 + ((x - 18) / 10) ** 2 <= 1).astype(np.uint8)
    pred = np.roll(target, 2, axis=2)
    pred[rng.random(pred.shape) < 0.001] = 1
    spacing = (2.0, 0.7, 0.7)
    chosen = [surface_module._prefer_tree(int(n), int(m), pred.size) for n, m in ((5000, 4000), (10, 10))]
    assert chosen == [False, True]
    found = {path: surface_module._class_distances(pred, target, 2, spacing, (0,), path=path)[1]
             for path in ("fast", "tree", "transform", "reference")}
    for path in ("fast", "tree", "transform"):
        np.testing.assert_allclose(found[path].pred_to_target, found["reference"].pred_to_target, rtol=1e-12)
        np.testing.assert_allclose(found[path].target_to_pred, found["reference"].target_to_pred, rtol=1e-12)
    # Islands beyond the ball of the fast path: some voxels went on to the tree.
    assert found["fast"].pred_to_target.max() > surface_module._ball(spacing)[1].max()


def test_the_fast_path_hands_far_surfaces_to_the_transform():
    """Two planes 10 voxels apart: no voxel finds the other surface in its ball, and for so many voxels in
    so small a box the transform is cheaper than the tree."""
    target = np.zeros((16, 30, 30), np.uint8)
    target[2] = 1
    pred = np.zeros_like(target)
    pred[12] = 1
    ball = surface_module._ball((1.0, 1.0, 1.0))
    assert ball[1].max() < 10 and not surface_module._prefer_tree(900, 900, 11 * 30 * 30)
    assert np.array_equal(ball[1], np.sort(ball[1]))
    found = surface_module._class_distances(pred, target, 2, (1.0, 1.0, 1.0), (0,))[1]
    assert np.all(found.pred_to_target == 10.0) and np.all(found.target_to_pred == 10.0)
    reference = surface_module._class_distances(pred, target, 2, (1.0, 1.0, 1.0), (0,), path="reference")[1]
    np.testing.assert_array_equal(found.pred_to_target, reference.pred_to_target)


def test_the_ball_holds_every_offset_within_its_radius_nearest_first():
    for steps in ((1.0, 1.0, 1.0), (2.5, 0.7, 0.9), (1.0, 0.37, 1.5)):
        offsets, distances = surface_module._ball(steps)
        radius = surface_module._BALL_VOXELS * max(steps)
        reach = [int(radius // s) + 1 for s in steps]
        cube = np.stack(np.meshgrid(*(np.arange(-r, r + 1) for r in reach), indexing="ij"), -1).reshape(-1, 3)
        inside = np.sqrt(((cube * np.asarray(steps)) ** 2).sum(1)) <= radius * (1 - 1e-12)
        assert {tuple(o) for o in cube[inside]} <= {tuple(o) for o in offsets}
        assert np.all(np.diff(distances) >= 0) and distances[0] == 0.0


# ------------------------------------------------------------------------------------------------ MONAI


def _one_hot(labels, k):
    import torch

    return torch.from_numpy(np.stack([labels == c for c in range(k)])[None].astype(np.float32))


def _monai(name, pred, target, k, spacing, **kwargs):
    metrics = need("monai.metrics")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about every empty class
        out = getattr(metrics, name)(_one_hot(pred, k), _one_hot(target, k), include_background=True,
                                     spacing=None if spacing is None else list(spacing), **kwargs)
    return out[0].numpy().astype(np.float64)


@given(cases(max_side=10), st.sampled_from([None, 95]))
def test_hausdorff_distance_equals_monai(case, percentile):
    pred, target, k, spacing = case
    theirs = _monai("compute_hausdorff_distance", pred, target, k, spacing, percentile=percentile)
    ours = hausdorff_distance(pred, target, k, percentile=percentile, spacing=spacing).distance
    if percentile is not None:
        # One map without the class: MONAI's torch.quantile of infinities is NaN, ours inf (documented).
        one_sided = np.isinf(ours)
        assert np.isnan(theirs[one_sided]).all()
        theirs[one_sided] = np.inf
    assert_close(ours, theirs, MONAI_RTOL, 0.0 if percentile is None else quantile_atol(pred, target, k, spacing))


@given(cases(max_side=10))
def test_average_surface_distance_equals_monai(case):
    pred, target, k, spacing = case
    theirs = _monai("compute_average_surface_distance", pred, target, k, spacing, symmetric=True)
    assert_close(average_surface_distance(pred, target, k, spacing=spacing).distance, theirs, MONAI_RTOL)


@given(cases(max_side=10), st.floats(0, 3))
def test_surface_dice_equals_monai(case, tolerance):
    pred, target, k, spacing = case
    found = oracle(pred, target, k, _spacing_or_ones(spacing, target.ndim))
    # MONAI compares float32 distances with the tolerance: keep ties (within float32 rounding) out.
    assume(all(not np.any(np.isclose(x, tolerance, rtol=1e-6, atol=1e-6)) for d in found for x in d))
    theirs = _monai("compute_surface_dice", pred, target, k, spacing, class_thresholds=[tolerance] * k)
    assert_close(surface_dice(pred, target, k, tolerance=tolerance, spacing=spacing).dice, theirs, MONAI_RTOL)


def test_monai_parity_on_a_3d_volume_with_anisotropic_spacing_and_an_empty_class():
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[:20, :32, :28]
    target = np.zeros((20, 32, 28), np.uint8)
    target[((z - 9) / 6) ** 2 + ((y - 14) / 9) ** 2 + ((x - 12) / 8) ** 2 <= 1] = 1
    target[((z - 11) / 5) ** 2 + ((y - 24) / 5) ** 2 + ((x - 20) / 5) ** 2 <= 1] = 2
    pred = np.roll(target, (1, -2, 1), axis=(0, 1, 2))
    pred[rng.random(pred.shape) < 0.002] = 1
    pred[pred == 2] = 0  # class 2 missed: one side empty; class 3 in neither
    spacing = (2.5, 0.7, 0.9)
    k = 4
    hd = _monai("compute_hausdorff_distance", pred, target, k, spacing)
    hd95 = _monai("compute_hausdorff_distance", pred, target, k, spacing, percentile=95)
    assd = _monai("compute_average_surface_distance", pred, target, k, spacing, symmetric=True)
    nsd = _monai("compute_surface_dice", pred, target, k, spacing, class_thresholds=[1.1] * k)
    ours = hausdorff_distance(pred, target, k, spacing=spacing)
    assert_close(ours.distance, hd, MONAI_RTOL)
    assert ours.distance[2] == math.inf and math.isnan(ours.distance[3])
    ours95 = hausdorff_distance(pred, target, k, spacing=spacing, percentile=95).distance
    assert_close(ours95[:2], hd95[:2], MONAI_RTOL, quantile_atol(pred, target, k, spacing)[:2])
    assert ours95[2] == math.inf and math.isnan(hd95[2])  # the documented difference
    assert_close(average_surface_distance(pred, target, k, spacing=spacing).distance, assd, MONAI_RTOL)
    ours_nsd = surface_dice(pred, target, k, tolerance=1.1, spacing=spacing).dice
    assert_close(ours_nsd, nsd, MONAI_RTOL)
    assert ours_nsd[2] == 0.0 and math.isnan(ours_nsd[3])


# ------------------------------------------------------------------------------------------------ conventions


def test_empty_mask_conventions():
    target = np.zeros((6, 6), int)
    target[1:4, 1:4] = 1
    pred = np.zeros_like(target)  # class 1 only in the target; class 2 in neither
    hd = hausdorff_distance(pred, target, 3)
    assert hd.distance[1] == math.inf and math.isnan(hd.distance[2]) and hd.mean == math.inf
    assert hausdorff_distance(pred, target, 3, percentile=95).distance[1] == math.inf
    assert hausdorff_distance(target, pred, 3, percentile=95).distance[1] == math.inf  # only predicted
    assd = average_surface_distance(pred, target, 3)
    assert assd.distance[1] == math.inf and math.isnan(assd.distance[2])
    nsd = surface_dice(pred, target, 3, tolerance=1)
    assert nsd.dice[1] == 0.0 and math.isnan(nsd.dice[2])
    assert nsd.mean == 0.5  # background 1.0 and class 1 0.0; class 2 left out
    assert math.isnan(hausdorff_distance(pred, target, 3, exclude_classes=(0, 1, 2)).mean)


def test_one_voxel_objects_and_thin_lines():
    target = np.zeros((7, 9), int)
    target[3, 4] = 1  # one voxel: its own surface
    target[:, 0] = 2  # a one-voxel-thick line along the border
    pred = np.zeros_like(target)
    pred[3, 6] = 1
    pred[:, 1] = 2
    result = hausdorff_distance(pred, target, 3, spacing=(1.0, 0.5), exclude_classes=(0,))
    assert result.distance.tolist()[1:] == [1.0, 0.5]
    assert surface_dice(pred, target, 3, tolerance=0.5, spacing=(1.0, 0.5)).dice[1:].tolist() == [0.0, 1.0]


def test_spacing_scales_distances():
    rng = np.random.default_rng(1)
    pred, target = rng.integers(0, 3, (2, 12, 10))
    unit = hausdorff_distance(pred, target, 3).distance
    assert_close(hausdorff_distance(pred, target, 3, spacing=2.5).distance, 2.5 * unit, 1e-12)
    assert_close(hausdorff_distance(pred, target, 3, spacing=(2.5, 2.5)).distance, 2.5 * unit, 1e-12)


def test_ignored_voxels_belong_to_no_class_and_inputs_are_not_changed():
    rng = np.random.default_rng(2)
    pred = rng.integers(0, 3, (10, 12)).astype(np.uint8)
    target = rng.integers(0, 3, (10, 12)).astype(np.uint8)
    target[rng.random(target.shape) < 0.2] = 255
    before = pred.copy(), target.copy()
    for ignore in (255, [255, 7]):
        found = oracle(pred, target, 3, (1.0, 1.0), ignore=(255,))
        assert_close(hausdorff_distance(pred, target, 3, ignore_index=ignore).distance,
                     [oracle_hd(d, None) for d in found], ORACLE_RTOL)
        assert_close(surface_dice(pred, target, 3, tolerance=1.5, ignore_index=ignore).dice,
                     [oracle_nsd(d, 1.5) for d in found], 1e-12)
    assert np.array_equal(pred, before[0]) and np.array_equal(target, before[1])


def test_torch_tensors_scores_booleans_and_labels_outside_the_classes():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    pred, target = rng.integers(0, 3, (2, 5, 6, 7))
    expected = average_surface_distance(pred, target, 3, spacing=(1, 2, 3))
    assert_close(average_surface_distance(torch.from_numpy(pred), torch.from_numpy(target), 3,
                                          spacing=torch.tensor([1.0, 2.0, 3.0])).distance, expected.distance, 0)
    scores = np.eye(3)[pred].transpose(3, 0, 1, 2).astype(np.float32)  # one case's (C, D, H, W) scores
    assert_close(average_surface_distance(scores, target, 3, spacing=(1, 2, 3)).distance, expected.distance, 0)
    masks = hausdorff_distance(pred == 1, target == 1, 2).distance
    assert_close(masks, hausdorff_distance(pred == 1, (target == 1).astype(np.int16), 2).distance, 0)
    # Labels >= num_classes belong to no class (as in boundary_iou): the class-2 voxels are then background's edge.
    assert_close(hausdorff_distance(pred, target, 2).distance,
                 [oracle_hd(d, None) for d in oracle(np.where(pred == 2, 9, pred), np.where(target == 2, 9, target),
                                                      2, (1.0, 1.0, 1.0))], ORACLE_RTOL)


def test_results_are_frozen_records():
    target = np.zeros((8, 8), int)
    target[2:6, 2:6] = 1
    hd = hausdorff_distance(target, target, 2, percentile=95, spacing=(0.5, 0.5))
    assert isinstance(hd, HausdorffDistanceResult)
    assert set(hd.as_dict()) == {"distance", "mean", "percentile", "spacing"}
    assert repr(hd).startswith("HausdorffDistanceResult(distance=[0., 0.], mean=0.0000, percentile=95.0000")
    with pytest.raises(AttributeError):
        hd.mean = 1.0
    assert isinstance(average_surface_distance(target, target, 2), SurfaceDistanceResult)
    nsd = surface_dice(target, target, 2, tolerance=[0.0, 1.0])
    assert isinstance(nsd, SurfaceDiceResult) and nsd.tolerance.tolist() == [0.0, 1.0]
    assert nsd.dice.dtype == np.float64 and nsd.pred_matched.dtype == np.int64


BAD_CALLS = [
    ("shapes differ", lambda: hausdorff_distance(np.zeros((4, 4), int), np.zeros((4, 5), int), 2), ValueError),
    ("one axis", lambda: hausdorff_distance(np.zeros(4, int), np.zeros(4, int), 2), ValueError),
    ("empty", lambda: hausdorff_distance(np.zeros((0, 4), int), np.zeros((0, 4), int), 2), ValueError),
    ("num_classes", lambda: hausdorff_distance(np.zeros((4, 4), int), np.zeros((4, 4), int), 0), ValueError),
    ("spacing length", lambda: hausdorff_distance(np.zeros((4, 4), int), np.zeros((4, 4), int), 2,
                                                  spacing=(1, 1, 1)), ValueError),
    ("spacing zero", lambda: hausdorff_distance(np.zeros((4, 4), int), np.zeros((4, 4), int), 2,
                                                spacing=(1, 0)), ValueError),
    ("spacing nan", lambda: average_surface_distance(np.zeros((4, 4), int), np.zeros((4, 4), int), 2,
                                                     spacing=float("nan")), ValueError),
    ("spacing text", lambda: hausdorff_distance(np.zeros((4, 4), int), np.zeros((4, 4), int), 2,
                                                spacing="1"), TypeError),
    ("spacing bool", lambda: hausdorff_distance(np.zeros((4, 4), int), np.zeros((4, 4), int), 2,
                                                spacing=True), TypeError),
    ("percentile 0", lambda: hausdorff_distance(np.zeros((4, 4), int), np.zeros((4, 4), int), 2,
                                                percentile=0), ValueError),
    ("percentile 101", lambda: hausdorff_distance(np.zeros((4, 4), int), np.zeros((4, 4), int), 2,
                                                  percentile=101), ValueError),
    ("tolerance negative", lambda: surface_dice(np.zeros((4, 4), int), np.zeros((4, 4), int), 2,
                                                tolerance=-1), ValueError),
    ("tolerance count", lambda: surface_dice(np.zeros((4, 4), int), np.zeros((4, 4), int), 2,
                                             tolerance=[1, 2, 3]), ValueError),
    ("tolerance inf", lambda: surface_dice(np.zeros((4, 4), int), np.zeros((4, 4), int), 2,
                                           tolerance=math.inf), ValueError),
    ("exclude", lambda: hausdorff_distance(np.zeros((4, 4), int), np.zeros((4, 4), int), 2,
                                           exclude_classes=(2,)), ValueError),
    ("float labels", lambda: hausdorff_distance(np.zeros((4, 4)), np.zeros((4, 4)), 2), TypeError),
]


@pytest.mark.parametrize("name, call, error", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_inputs_raise_naming_the_parameter(name, call, error):
    with pytest.raises(error):
        call()


def test_tolerance_is_keyword_only_and_required():
    with pytest.raises(TypeError):
        surface_dice(np.zeros((4, 4), int), np.zeros((4, 4), int), 2, 1.0)


# ------------------------------------------------------------------------------------------------ SegMetrics


def _volumes(seed, count=3):
    rng = np.random.default_rng(seed)
    target = np.zeros((count, 5, 12, 11), np.uint8)
    target[:, 1:4, 2:9, 3:8] = 1
    target[:, 2:4, 7:11, 6:10] = 2
    pred = np.where(rng.random(target.shape) < 0.05, rng.integers(0, 3, target.shape), target).astype(np.uint8)
    pred[-1][pred[-1] == 2] = 0  # the last case misses class 2: its HD95 and ASSD are inf
    return pred, target


def test_segmetrics_surface_means_are_the_mean_of_the_cases():
    from segpost import SegMetrics
    from segpost.metrics import case_metrics

    spacing = (3.0, 0.8, 0.8)
    pred, target = _volumes(0)
    metrics = SegMetrics(3, surface=True, spacing=spacing, tolerance=[0.0, 1.0, 2.0], class_names=["bg", "a", "b"])
    cases = metrics.update(pred[:2], target[:2])  # a batch of two volumes
    cases += metrics.update(pred[2], target[2])   # and one volume
    assert len(cases) == 3 and metrics.num_cases == 3
    expected = [case_metrics(p, t, 3, spacing=spacing, tolerance=[0.0, 1.0, 2.0]) for p, t in zip(pred, target)]
    for mine, theirs in zip(cases, expected):
        assert_close(mine.hd, theirs.hd, 0)
    result = metrics.compute()
    for name, field in (("hd95", "hd"), ("assd", "assd"), ("nsd", "nsd")):
        per_case = np.stack([getattr(e, field) for e in expected])
        assert_close(getattr(result, name), per_case.mean(axis=0), 1e-12)
    assert result.hd95[2] == math.inf and result.mhd95 == math.inf and math.isfinite(result.hd95[1])
    assert_close(result.hd95[1], np.mean([hausdorff_distance(p, t, 3, percentile=95, spacing=spacing).distance[1]
                                          for p, t in zip(pred, target)]), 1e-12)
    table = result.table()
    assert "HD95" in table and "NSD" in table and "over 3 cases" in table
    as_json = result.to_dict()
    assert as_json["hd95"][2] == "inf" and as_json["num_cases"] == 3


def test_segmetrics_surface_two_dimensional_batches_and_exclusions():
    from segpost import SegMetrics

    rng = np.random.default_rng(5)
    pred, target = rng.integers(0, 3, (2, 4, 9, 9))
    metrics = SegMetrics(3, surface=True, exclude_classes=[0])  # no spacing: 2-D images, spacing 1
    metrics.update(pred, target)
    found = np.stack([hausdorff_distance(p, t, 3, percentile=95).distance for p, t in zip(pred, target)])
    result = metrics.compute()
    assert math.isnan(result.hd95[0]) and metrics.surface_counts[0, 0] == 0
    assert_close(result.hd95[1:], found.mean(axis=0)[1:], 1e-12)
    with pytest.raises(ValueError, match="spatial axes"):
        SegMetrics(3, surface=True, spacing=(1, 1, 1)).update(pred[0, 0], target[0, 0])
    with pytest.raises(ValueError, match="spacing"):
        SegMetrics(3, surface=True).update(pred, target, spacing=(1, -1))
    with pytest.raises(ValueError, match="tolerance"):
        SegMetrics(3, surface=True, tolerance=[1, 2])


def test_segmetrics_surface_merge_and_state_dict_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    from segpost import SegMetrics

    spacing = (3.0, 0.8, 0.8)
    pred, target = _volumes(1)
    whole = SegMetrics(3, surface=True, spacing=spacing)
    whole.update(pred, target)
    first, second = SegMetrics(3, surface=True, spacing=spacing), SegMetrics(3, surface=True, spacing=spacing)
    first.update(pred[:1], target[:1])
    second.update(pred[1:], target[1:])
    merged = first.merge(second).compute()
    assert_close(merged.hd95, whole.compute().hd95, 1e-12)
    assert_close(merged.nsd, whole.compute().nsd, 1e-12)
    torch.save(whole.state_dict(), tmp_path / "state.pt")
    loaded = SegMetrics(3, surface=True, spacing=spacing).load_state_dict(torch.load(tmp_path / "state.pt",
                                                                                     weights_only=True))
    assert loaded.num_cases == 3
    assert_close(loaded.compute().assd, whole.compute().assd, 0)
    with pytest.raises(ValueError, match="different settings"):
        SegMetrics(3, surface=True, tolerance=2.0).merge(whole)
    with pytest.raises(ValueError, match="different settings"):
        SegMetrics(3).load_state_dict(whole.state_dict())


@pytest.mark.parametrize("key, value", [("surface_sums", np.zeros((3, 2))), ("surface_counts", -np.ones((3, 3), int)),
                                        ("surface_counts", np.zeros((3, 3))), ("num_cases", -1),
                                        ("surface_sums", np.full((3, 3), np.nan))])
def test_segmetrics_rejects_a_bad_surface_state_before_changing_anything(key, value):
    pytest.importorskip("torch")
    from segpost import SegMetrics

    pred, target = _volumes(2, count=1)
    metrics = SegMetrics(3, surface=True, spacing=(3.0, 0.8, 0.8))
    metrics.update(pred, target)
    before = metrics.state_dict()
    state = dict(before, **{key: value})
    with pytest.raises(ValueError, match=key):
        SegMetrics(3, surface=True, spacing=(3.0, 0.8, 0.8)).load_state_dict(state)
    target_metrics = SegMetrics(3, surface=True, spacing=(3.0, 0.8, 0.8))
    with pytest.raises(ValueError):
        target_metrics.load_state_dict(state)
    assert target_metrics.num_cases == 0 and int(target_metrics.confusion.sum()) == 0


def test_segmetrics_surface_sync_over_two_gloo_processes(tmp_path):
    pytest.importorskip("torch")
    from test_metrics import _run_two_ranks

    from distributed_worker import SURFACE_SPACING, rank_volumes
    from segpost import SegMetrics

    results = _run_two_ranks(tmp_path, "surface")
    whole = SegMetrics(4, surface=True, spacing=SURFACE_SPACING, tolerance=1.5, exclude_classes=[0])
    for rank in (0, 1):
        whole.update(*rank_volumes(rank))
    expected = whole.compute().to_dict()
    for res in results:
        assert res["num_cases"] == 4
        assert res["confusion"] == expected["confusion"]
        for name in ("hd95", "assd", "nsd"):
            assert [v if isinstance(v, str) or v is None else pytest.approx(v, rel=1e-12) for v in res[name]] \
                == expected[name]
        assert res["hd95"][2] == "inf" and res["nsd"][3] is None
