"""Metrics on volumes: one (D, H, W) volume is one case (SegMetrics(spatial_ndim=3), evaluate), Boundary IoU in 3-D."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from segpost import SegMetrics, confusion_matrix, evaluate
from segpost.metrics import boundary_iou
from segpost.metrics import scores


def _blocky_volume(rng, shape, k, p_noise=0.1):
    d, h, w = shape
    coarse = rng.integers(0, k, (d // 2 + 1, h // 3 + 1, w // 3 + 1))
    volume = np.kron(coarse, np.ones((2, 3, 3), np.int64))[:d, :h, :w]
    noise = rng.random(shape) < p_noise
    return np.where(noise, rng.integers(0, k, shape), volume)


def _official_band(mask, d):
    """boundary-iou-api's mask_to_boundary, in 3-D: mask - erode(pad(mask, 1, 0), 3x3x3 cube, d times), cropped."""
    from scipy import ndimage

    padded = np.pad(mask, 1)
    eroded = ndimage.binary_erosion(padded, structure=np.ones((3,) * mask.ndim, bool), iterations=d)
    return mask & ~eroded[(slice(1, -1),) * mask.ndim]


@given(shape=st.tuples(st.integers(1, 9), st.integers(1, 12), st.integers(1, 12)), k=st.integers(1, 4),
       width=st.integers(1, 4), ignore=st.booleans(), seed=st.integers(0, 2**16))
def test_boundary_iou_on_volumes_equals_the_official_definition(shape, k, width, ignore, seed):
    rng = np.random.default_rng(seed)
    target, pred = _blocky_volume(rng, shape, k), _blocky_volume(rng, shape, k)
    if ignore:
        target[rng.random(shape) < 0.1] = 255
    result = boundary_iou(pred, target, k, width=width, ignore_index=255 if ignore else None)
    kept = target != 255
    for c in range(k):
        g = _official_band(target == c, width) & kept
        p = _official_band(pred == c, width) & kept
        assert result.intersection[c] == np.count_nonzero(g & p)
        assert result.union[c] == np.count_nonzero(g | p)


def test_boundary_iou_volume_width_comes_from_the_volume_diagonal():
    target = np.zeros((40, 60, 80), np.int64)
    target[10:30, 20:40, 20:60] = 1
    result = boundary_iou(target, target, 2)
    assert result.width == round(0.02 * math.sqrt(40**2 + 60**2 + 80**2)) and result.miou == 1.0


def _per_case_means(preds, targets, k):
    mious, mdices = [], []
    for p, t in zip(preds, targets):
        cm = np.asarray(confusion_matrix(p, t, k), np.int64)
        mious.append(scores.mean_score(scores.iou(cm)))
        mdices.append(scores.mean_score(scores.dice(cm)))
    return np.mean(mious), np.mean(mdices)


@given(batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_a_volume_is_one_case(batch, seed):
    rng = np.random.default_rng(seed)
    shape, k = (6, 10, 12), 3
    targets = np.stack([_blocky_volume(rng, shape, k) for _ in range(batch)])
    preds = np.stack([_blocky_volume(rng, shape, k, 0.3) for _ in range(batch)])
    metrics = SegMetrics(k, per_image=True, boundary=True, spatial_ndim=3)
    metrics.update(preds, targets)                        # (B, D, H, W): B volumes
    one_by_one = SegMetrics(k, per_image=True, boundary=True, spatial_ndim=3)
    for p, t in zip(preds, targets):
        one_by_one.update(p, t)                           # (D, H, W): one volume
    for m in (metrics, one_by_one):
        result = m.compute()
        assert result.num_images == result.num_scored_images == batch and result.spatial_ndim == 3
        miou, mdice = _per_case_means(preds, targets, k)
        assert result.per_image_miou == pytest.approx(miou) and result.per_image_mdice == pytest.approx(mdice)
        inter = sum(boundary_iou(p, t, k).intersection for p, t in zip(preds, targets))
        union = sum(boundary_iou(p, t, k).union for p, t in zip(preds, targets))
        np.testing.assert_array_equal(m.boundary_intersection, inter)
        np.testing.assert_array_equal(m.boundary_union, union)
    np.testing.assert_array_equal(metrics.confusion, one_by_one.confusion)


def test_the_rule_is_stated_not_guessed():
    target = np.zeros((4, 8, 8), np.int64)
    target[1:3, 2:6, 2:6] = 1
    images = SegMetrics(2, per_image=True)                 # default: images; a (D, H, W) target is D images
    images.update(target, target)
    assert images.compute().num_images == 4 and images.spatial_ndim == 2
    assert SegMetrics(2, spacing=(3.0, 0.8, 0.8)).spatial_ndim == 3   # a 3-long spacing says volumes
    assert SegMetrics(2, spacing=(0.8, 0.8)).spatial_ndim == 2
    with pytest.raises(ValueError, match="spacing has 2 entries but spatial_ndim is 3"):
        SegMetrics(2, spacing=(0.8, 0.8), spatial_ndim=3)
    with pytest.raises(ValueError, match="spatial_ndim must be 2"):
        SegMetrics(2, spatial_ndim=4)
    with pytest.raises(ValueError, match="neither one volume"):
        SegMetrics(2, spatial_ndim=3).update(target[0], target[0])   # a 2-D map is no volume


def test_volume_scores_have_their_class_axis_first():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, (5, 6, 7))
    scores_ = rng.normal(size=(3, 5, 6, 7)).astype(np.float32)
    metrics = SegMetrics(3, spatial_ndim=3)
    metrics.update(scores_, target)                        # (C, D, H, W)
    metrics.update(torch.from_numpy(scores_[None]), torch.from_numpy(target[None]))   # (B, C, D, H, W)
    expected = np.asarray(confusion_matrix(scores_.argmax(0), target, 3))
    np.testing.assert_array_equal(metrics.confusion, 2 * expected)
    assert metrics.num_images == 2
    with pytest.raises(ValueError, match="one class channel"):
        metrics.update(scores_[:1], target)


def test_wording_and_state():
    target = np.zeros((2, 4, 8, 8), np.int64)
    target[:, 1:3, 2:6, 2:6] = 1
    metrics = SegMetrics(2, per_image=True, spatial_ndim=3)
    metrics.update(target, target)
    table = metrics.compute().table()
    assert "per-volume mIoU 100.00, mDice 100.00 over 2 volumes" in table and "voxels" in table
    assert "per-image" not in table
    assert metrics.compute().to_dict()["spatial_ndim"] == 3
    state = metrics.state_dict()
    restored = SegMetrics(2, per_image=True, spatial_ndim=3).load_state_dict(state)
    assert restored.compute().per_image_mdice == 1.0
    with pytest.raises(ValueError, match="spatial_ndim 3 vs 2"):
        SegMetrics(2, per_image=True).load_state_dict(state)
    with pytest.raises(ValueError, match="spatial_ndim"):
        SegMetrics(2, per_image=True).merge(metrics)
    old = {key: value for key, value in state.items() if key not in ("per_image_dice_sum", "spatial_ndim")}
    legacy = SegMetrics(2, per_image=True, spatial_ndim=3).load_state_dict(old)  # saved before per-case Dice
    assert legacy.compute().per_image_miou == 1.0 and math.isnan(legacy.compute().per_image_mdice)
    images = SegMetrics(2, per_image=True)
    images.update(target[0, 1], target[0, 1])
    assert "per-image mIoU 100.00, mDice 100.00 over 1 images" in images.compute().table()


def test_surface_metrics_follow_the_same_rule():
    target = np.zeros((2, 4, 16, 16), np.uint8)
    target[:, 1:3, 4:12, 4:12] = 1
    metrics = SegMetrics(2, surface=True, spatial_ndim=3, exclude_classes=[0])   # spacing 1 along 3 axes
    cases = metrics.update(target, target)
    assert len(cases) == 2 and metrics.spacing == (1.0, 1.0, 1.0) and metrics.compute().mnsd == 1.0
    with pytest.raises(ValueError, match="spacing"):
        metrics.update(target, target, spacing=(1.0, 1.0))


def test_evaluate_counts_volumes():
    rng = np.random.default_rng(1)
    volumes = [rng.normal(size=(6, 10, 10)).astype(np.float32) for _ in range(3)]
    targets = [(v > 0).astype(np.int64) for v in volumes]
    model = lambda v: (np.asarray(v) > 0).astype(np.int64)  # noqa: E731  a perfect "model"
    result = evaluate(model, list(zip(volumes, targets)), num_classes=2, per_image=True, boundary=True,
                      spatial_ndim=3, progress=False)
    assert result.num_images == 3 and result.per_image_miou == 1.0 and result.mboundary_iou == 1.0
    # a collated DataLoader of volumes: (B, D, H, W) scans with (B, 1, D, H, W) targets
    loader = torch.utils.data.DataLoader([(v, t[None]) for v, t in zip(volumes, targets)], batch_size=2)
    result = evaluate(model, loader, num_classes=2, per_image=True, spatial_ndim=3, progress=False)
    assert result.num_images == 3 and result.per_image_miou == 1.0
    # items of (M, D, H, W) multi-channel scans are single cases, told apart by their 3-D targets
    result = evaluate(lambda v: model(v[0]), [(np.stack([v, v]), t) for v, t in zip(volumes, targets)],
                      num_classes=2, spatial_ndim=3, progress=False)
    assert result.num_images == 3


@pytest.mark.parametrize("channels", [2, 4])
def test_volume_scores_with_another_class_count_are_refused(channels):
    target = np.zeros((8, 12, 12), np.int64)
    scores = np.random.default_rng(0).normal(size=(channels, 8, 12, 12)).astype(np.float32)
    metrics = SegMetrics(3, per_image=True, spatial_ndim=3)
    with pytest.raises(ValueError, match=f"{channels} classes on axis 0.*the metric 3"):
        metrics.update(scores, target)
    with pytest.raises(ValueError, match=f"{channels} classes on axis 1"):
        metrics.update(scores[None], target[None])


def test_volume_scores_of_another_size_name_both_shapes():
    # The error shows the scores' own shape, not the argmax's.
    scores = np.random.default_rng(0).normal(size=(3, 8, 12, 12)).astype(np.float32)
    metrics = SegMetrics(3, spatial_ndim=3)
    with pytest.raises(ValueError, match=r"pred scores of shape \(3, 8, 12, 12\) .* target of shape \(8, 12, 6\)"):
        metrics.update(scores, np.zeros((8, 12, 6), np.int64))
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 12, 12\) \(classes on axis 1\)"):
        metrics.update(np.stack([scores] * 2), np.zeros((2, 8, 12, 6), np.int64))
