"""Boundary metrics against brute-force definitions on small label maps."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from segpost.metrics import (
    BoundaryFScoreResult, BoundaryIoUResult, TrimapResult, boundary_fscore, boundary_iou, label_boundaries,
    trimap_metrics,
)


def brute_boundaries(labels):
    h, w = labels.shape
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and labels[yy, xx] != labels[y, x]:
                    out[y, x] = True
    return out


def brute_confusion(pred, target, k):
    cm = np.zeros((k, k), np.int64)
    for t, p in zip(target.ravel(), pred.ravel()):
        cm[t, p] += 1
    return cm


def brute_distance_to(mask_from, targets):
    """Euclidean distance from every pixel to the nearest True pixel of `targets` (inf if none)."""
    pts = np.argwhere(targets)
    h, w = mask_from.shape
    yy, xx = np.mgrid[0:h, 0:w]
    if len(pts) == 0:
        return np.full((h, w), np.inf)
    d = np.sqrt((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2)
    return d.min(axis=-1)


def official_mask_to_boundary(mask, dilation):
    """boundary-iou-api's ``mask_to_boundary`` (boundary_iou/utils/boundary_utils.py), transcribed.

    The original pads with ``cv2.copyMakeBorder(..., BORDER_CONSTANT, value=0)``
    and erodes with ``cv2.erode(new_mask, np.ones((3, 3)), iterations=dilation)``;
    scipy's binary erosion with the same structure and iterations gives the
    same pixels (OpenCV's default erosion border is the maximum, beyond the
    zero ring that the padding adds, so border_value changes nothing here).
    """
    from scipy import ndimage

    h, w = mask.shape
    new_mask = np.pad(mask.astype(np.uint8), 1)
    new_mask_erode = ndimage.binary_erosion(new_mask, structure=np.ones((3, 3)), iterations=dilation,
                                            border_value=0).astype(np.uint8)
    mask_erode = new_mask_erode[1:h + 1, 1:w + 1]
    return mask.astype(np.uint8) - mask_erode


def official_dilation(shape, dilation_ratio):
    h, w = shape
    return max(1, int(round(dilation_ratio * np.sqrt(h**2 + w**2))))


def official_counts(pred, target, k, dilation, keep):
    """Per class, the official bands' intersection and union (ignored pixels, keep False, dropped from both)."""
    inter, union = np.zeros(k, np.int64), np.zeros(k, np.int64)
    for c in range(k):
        g = official_mask_to_boundary(target == c, dilation).astype(bool) & keep
        p = official_mask_to_boundary(pred == c, dilation).astype(bool) & keep
        inter[c], union[c] = np.count_nonzero(g & p), np.count_nonzero(g | p)
    return inter, union


@st.composite
def maps(draw):
    h, w = draw(st.integers(2, 14)), draw(st.integers(2, 14))
    k = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # blobby maps: upsampled coarse labels, so that there are regions and edges
    coarse = rng.integers(0, k, size=(max(1, h // 3), max(1, w // 3)))
    target = np.kron(coarse, np.ones((3, 3), int))[:h, :w]
    target = np.pad(target, ((0, h - target.shape[0]), (0, w - target.shape[1])), mode="edge")
    pred = np.where(rng.random((h, w)) < 0.15, rng.integers(0, k, size=(h, w)), target)
    return pred, target, k


@given(maps())
def test_label_boundaries_match_brute_force(case):
    _, target, _ = case
    np.testing.assert_array_equal(label_boundaries(target), brute_boundaries(target))


@given(maps(), st.integers(1, 20))
def test_boundary_iou_equals_the_official_code(case, width):
    # width from 1 pixel to beyond the image (14 pixels at most): every band is then the whole mask
    pred, target, k = case
    result = boundary_iou(pred, target, k, width=width)
    per_class, inter, union = result.iou, result.intersection, result.union
    assert result.width == width and result.miou == pytest.approx(np.nanmean(per_class), nan_ok=True)
    want_inter, want_union = official_counts(pred, target, k, width, np.ones(target.shape, bool))
    np.testing.assert_array_equal(inter, want_inter)
    np.testing.assert_array_equal(union, want_union)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(per_class, np.where(want_union > 0, want_inter / np.maximum(want_union, 1),
                                                          np.nan))
    assert boundary_iou(target, target, k, width=width).miou == 1.0


@st.composite
def scenes(draw):
    """Odd-sized maps of random shapes: blobs, stripes, noise, classes on the border, an ignore label."""
    h, w = draw(st.integers(1, 41)), draw(st.integers(1, 41))
    k = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["blocks", "stripes", "noise", "one", "disc"]))
    if kind == "blocks":
        s = int(rng.integers(1, 9))
        target = np.kron(rng.integers(0, k, (h // s + 1, w // s + 1)), np.ones((s, s), int))[:h, :w]
    elif kind == "stripes":
        target = (np.add.outer(np.arange(h), np.arange(w)) // int(rng.integers(1, 7))) % k
    elif kind == "noise":
        target = rng.integers(0, k, (h, w))
    elif kind == "one":
        target = np.full((h, w), int(rng.integers(0, k)))
    else:
        yy, xx = np.mgrid[0:h, 0:w]
        target = ((yy - rng.uniform(0, h)) ** 2 + (xx - rng.uniform(0, w)) ** 2 < rng.uniform(1, 400)).astype(int) % k
    pred = np.where(rng.random((h, w)) < rng.uniform(0, 0.3), rng.integers(0, k, (h, w)), np.roll(target, 1, 1))
    if draw(st.booleans()):
        target = np.where(rng.random((h, w)) < 0.1, 255, target)
    ratio = draw(st.sampled_from([0.001, 0.02, 0.05, 0.2, 1.0]))
    return pred, target, k, ratio


@given(scenes())
def test_boundary_iou_equals_the_official_code_on_scenes(scene):
    pred, target, k, ratio = scene
    result = boundary_iou(pred, target, k, dilation_ratio=ratio, ignore_index=255)
    want = official_counts(pred, target, k, official_dilation(target.shape, ratio), target != 255)
    np.testing.assert_array_equal(result.intersection, want[0])
    np.testing.assert_array_equal(result.union, want[1])


def test_boundary_iou_band_is_a_square_not_a_disc():
    # (7, 7) lies diagonally off the corner (4, 4) of a class-0 block: Chebyshev distance 3,
    # Euclidean 4.2. The official band of width 3 (an erosion by squares) holds it.
    target = np.ones((20, 20), int)
    target[:5, :5] = 0
    result = boundary_iou(target, target, 2, width=3)
    band = official_mask_to_boundary(target == 1, 3).astype(bool)
    assert band[7, 7] and not band[8, 7] and result.union[1] == band.sum() == result.intersection[1]


@given(maps(), st.integers(0, 3))
def test_boundary_fscore_matches_definition(case, tolerance):
    pred, target, _ = case
    result = boundary_fscore(pred, target, tolerance=tolerance)
    f, p, r = result.fscore, result.precision, result.recall
    gb, pb = brute_boundaries(target), brute_boundaries(pred)
    assert (result.pred_boundary, result.target_boundary) == (pb.sum(), gb.sum())
    if not gb.any() and not pb.any():
        assert (f, p, r) == (1.0, 1.0, 1.0)
        return
    if not gb.any() or not pb.any():
        assert (f, p, r) == (0.0, 0.0, 0.0)
        return
    prec = (brute_distance_to(pb, gb)[pb] <= tolerance).mean()
    rec = (brute_distance_to(gb, pb)[gb] <= tolerance).mean()
    assert result.pred_matched == (brute_distance_to(pb, gb)[pb] <= tolerance).sum()
    assert result.target_matched == (brute_distance_to(gb, pb)[gb] <= tolerance).sum()
    assert p == pytest.approx(prec) and r == pytest.approx(rec)
    assert f == pytest.approx(0 if prec + rec == 0 else 2 * prec * rec / (prec + rec))


@given(maps(), st.integers(1, 3))
def test_trimap_matches_definition(case, width):
    pred, target, k = case
    out = trimap_metrics(pred, target, k, width=width)
    edges = brute_boundaries(target)
    if not edges.any():
        assert out.num_pixels == 0 and np.isnan(out.accuracy) and not out.confusion.any()
        return
    band = brute_distance_to(edges, edges) <= width
    assert out.num_pixels == band.sum() == out.confusion.sum()
    assert out.accuracy == pytest.approx((pred[band] == target[band]).mean())
    np.testing.assert_array_equal(out.confusion, brute_confusion(pred[band], target[band], k))


def test_ignored_pixels_take_no_part():
    target = np.zeros((20, 20), int)
    target[:, 10:] = 1
    target[:, 15:] = 255
    pred = target.copy()
    pred[:, 15:] = 0  # anything: ignored
    f = boundary_fscore(pred, target, ignore_index=255)
    assert (f.fscore, f.precision, f.recall) == (1.0, 1.0, 1.0)
    assert trimap_metrics(pred, target, 2, width=2, ignore_index=255).accuracy == 1.0
    assert boundary_iou(pred, target, 2, ignore_index=255).miou == 1.0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: boundary_iou(np.zeros((2, 2, 3, 3), int), np.zeros((2, 2, 3, 3), int), 2), "one \\(H, W\\)"),
        (lambda: boundary_iou(np.zeros((3, 3), int), np.zeros((3, 3), int), 2, dilation_ratio=0), "dilation_ratio"),
        (lambda: boundary_iou(np.zeros((3, 3), int), np.zeros((3, 3), int), 2, width=0), "width"),
        (lambda: boundary_fscore(np.zeros((3, 3), int), np.zeros((3, 3), int), tolerance=-1), "tolerance"),
        (lambda: boundary_fscore(np.zeros((0, 3), int), np.zeros((0, 3), int)), "non-empty"),
        (lambda: trimap_metrics(np.zeros((3, 3), int), np.zeros((3, 4), int), 2), "same shape"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@given(st.lists(scenes(), min_size=1, max_size=4))
def test_seg_metrics_streams_boundary_iou(scenes_list):
    # Dataset-level Boundary IoU: per-image band counts summed, as boundary_iou counts them.
    from segpost import SegMetrics

    k = max(s[2] for s in scenes_list)
    metrics = SegMetrics(k, ignore_index=255, boundary=True, boundary_dilation_ratio=0.05)
    inter, union = np.zeros(k, np.int64), np.zeros(k, np.int64)
    halves = [SegMetrics(k, ignore_index=255, boundary=True, boundary_dilation_ratio=0.05) for _ in range(2)]
    for i, (pred, target, _, _) in enumerate(scenes_list):
        metrics.update(pred, target)
        halves[i % 2].update(pred, target)
        counts = boundary_iou(pred, target, k, dilation_ratio=0.05, ignore_index=255)
        inter += counts.intersection
        union += counts.union
    result = metrics.compute()
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(result.boundary_iou, np.where(union > 0, inter / np.maximum(union, 1), np.nan))
    merged = halves[0].merge(halves[1]).compute()
    np.testing.assert_array_equal(merged.boundary_iou, result.boundary_iou)
    restored = SegMetrics(k, ignore_index=255, boundary=True, boundary_dilation_ratio=0.05)
    restored.load_state_dict(metrics.state_dict())
    np.testing.assert_array_equal(restored.compute().boundary_iou, result.boundary_iou)
    assert "BIoU" in result.table() and "BIoU" not in SegMetrics(k).compute().table()


def test_seg_metrics_boundary_counts_each_image_of_a_batch():
    from segpost import SegMetrics

    rng = np.random.default_rng(0)
    target = np.kron(rng.integers(0, 3, (3, 4, 4)), np.ones((1, 6, 6), int))
    pred = np.roll(target, 2, axis=2)
    batch, single = SegMetrics(3, boundary=True), SegMetrics(3, boundary=True)
    batch.update(pred, target)
    for p, t in zip(pred, target):
        single.update(p, t)
    np.testing.assert_array_equal(batch.boundary_union, single.boundary_union)
    np.testing.assert_array_equal(batch.boundary_intersection, single.boundary_intersection)


def test_the_three_results_are_one_kind():
    target = np.zeros((24, 24), int)
    target[6:18, 6:18] = 1
    pred = np.roll(target, 1, 1)
    results = [boundary_iou(pred, target, 2), boundary_fscore(pred, target), trimap_metrics(pred, target, 2)]
    for result, kind in zip(results, (BoundaryIoUResult, BoundaryFScoreResult, TrimapResult)):
        assert isinstance(result, kind)
        fields = result.as_dict()
        assert all(getattr(result, name) is value for name, value in fields.items())
        assert repr(result).startswith(kind.__name__ + "(") and all(name in repr(result) for name in fields)
        with pytest.raises(AttributeError):  # frozen: a result is a record, not a running total
            result.width = 3
