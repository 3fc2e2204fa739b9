"""Boundary metrics against brute-force definitions on small label maps."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from segpost.metrics import boundary_fscore, boundary_iou, label_boundaries, trimap_metrics


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


def brute_distance_to(mask_from, targets):
    """Euclidean distance from every pixel to the nearest True pixel of `targets` (inf if none)."""
    pts = np.argwhere(targets)
    h, w = mask_from.shape
    yy, xx = np.mgrid[0:h, 0:w]
    if len(pts) == 0:
        return np.full((h, w), np.inf)
    d = np.sqrt((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2)
    return d.min(axis=-1)


def brute_inner_band(mask, width):
    # distance from each mask pixel to the nearest non-mask pixel, the outside of the image included
    padded = np.pad(mask, 1)
    dist = brute_distance_to(padded, ~padded)[1:-1, 1:-1]
    return mask & (dist <= width)


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


@given(maps(), st.integers(1, 4))
def test_boundary_iou_matches_definition(case, width):
    pred, target, k = case
    per_class, mean, inter, union = boundary_iou(pred, target, k, width=width, return_counts=True)
    for c in range(k):
        g = brute_inner_band(target == c, width)
        p = brute_inner_band(pred == c, width)
        if (target == c).any() or (pred == c).any():
            assert inter[c] == (g & p).sum() and union[c] == (g | p).sum()
            assert per_class[c] == pytest.approx((g & p).sum() / (g | p).sum())
        else:
            assert math.isnan(per_class[c])
    assert boundary_iou(target, target, k, width=width)[1] == 1.0


@given(maps(), st.integers(0, 3))
def test_boundary_fscore_matches_definition(case, tolerance):
    pred, target, _ = case
    f, p, r = boundary_fscore(pred, target, tolerance=tolerance)
    gb, pb = brute_boundaries(target), brute_boundaries(pred)
    if not gb.any() and not pb.any():
        assert (f, p, r) == (1.0, 1.0, 1.0)
        return
    if not gb.any() or not pb.any():
        assert (f, p, r) == (0.0, 0.0, 0.0)
        return
    prec = (brute_distance_to(pb, gb)[pb] <= tolerance).mean()
    rec = (brute_distance_to(gb, pb)[gb] <= tolerance).mean()
    assert p == pytest.approx(prec) and r == pytest.approx(rec)
    assert f == pytest.approx(0 if prec + rec == 0 else 2 * prec * rec / (prec + rec))


@given(maps(), st.integers(1, 3))
def test_trimap_matches_definition(case, width):
    pred, target, k = case
    out = trimap_metrics(pred, target, k, width=width)
    edges = brute_boundaries(target)
    if not edges.any():
        assert out["num_pixels"] == 0
        return
    band = brute_distance_to(edges, edges) <= width
    assert out["num_pixels"] == band.sum()
    assert out["accuracy"] == pytest.approx((pred[band] == target[band]).mean())


def test_ignored_pixels_take_no_part():
    target = np.zeros((20, 20), int)
    target[:, 10:] = 1
    target[:, 15:] = 255
    pred = target.copy()
    pred[:, 15:] = 0  # anything: ignored
    assert boundary_fscore(pred, target, ignore_index=255) == (1.0, 1.0, 1.0)
    assert trimap_metrics(pred, target, 2, width=2, ignore_index=255)["accuracy"] == 1.0
    assert boundary_iou(pred, target, 2, ignore_index=255)[1] == 1.0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: boundary_iou(np.zeros((2, 3, 3), int), np.zeros((2, 3, 3), int), 2), "one \\(H, W\\)"),
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
