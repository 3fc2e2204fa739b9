"""Inputs that were refused, mishandled or turned into wrong numbers without an
error (issue: reliability). Each is a clean exception naming the problem, or a
right answer."""
import warnings

import numpy as np
import pytest

import segpost
from segpost.compat.pydensecrf import densecrf as dcrf
from segpost.compat.pydensecrf import utils as dcrf_utils

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8)
LOGITS = RNG.normal(size=(3, 8, 8)).astype(np.float32)


# --- wrong numbers without an error -------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda: segpost.crf_refine(IMAGE, np.full((3, 8, 8), 1e39)),
    lambda: segpost.resize_logits(np.full((3, 8, 8), 1e39), (16, 16)),
    lambda: segpost.PermutohedralLattice(RNG.uniform(size=(10, 2))).filter(np.full((10, 2), 1e39)),
    lambda: segpost.crf_refine(np.full((32, 32, 3), 1e300), LOGITS),
    lambda: segpost.bilateral_filter(np.full((32, 32, 3), 1e300), sigma_spatial=3, sigma_color=10),
], ids=["crf logits", "resize_logits", "lattice values", "crf image", "bilateral image"])
def test_float64_beyond_float32_range_is_refused(call):
    with pytest.raises(ValueError, match="range|magnitude"):
        call()


@pytest.mark.parametrize("unary_scale, compat", [(1e16, 3.0), (1.0, 1e16), (1e30, 1e30)])
def test_extreme_crf_scores_are_refused(unary_scale, compat):
    unary = (RNG.normal(size=(3, 16, 16)) * unary_scale).astype(np.float32)
    with pytest.raises(ValueError, match="magnitude"):
        crf = segpost.DenseCRF(unary)
        crf.add_gaussian(3, compat=compat)


@pytest.mark.parametrize("labels", [3, 9, 21])
def test_largest_accepted_scores_give_marginals_that_sum_to_one(labels):
    # Scores at the accepted bound: messages stay finite and the padding lanes never win.
    unary = (np.sign(RNG.normal(size=(labels, 16, 16))) * 1e15).astype(np.float32)
    crf = segpost.DenseCRF(unary)
    crf.add_gaussian(3, compat=1e15)
    crf.add_bilateral(RNG.integers(0, 255, (16, 16, 3), dtype=np.uint8), 5, 10, compat=-1e15)
    q = np.asarray(crf.inference(3))
    assert np.isfinite(q).all()
    np.testing.assert_allclose(q.sum(axis=0), 1, atol=1e-5)


def test_joint_bilateral_upsample_stays_within_the_coarse_range():
    # A guide whose colours match no coarse sample near a pixel: the lattice
    # weight underflows there; the result must still be an average of the scores.
    coarse = RNG.normal(size=(4, 4, 4)).astype(np.float32)
    guide = np.zeros((32, 32, 3), np.float32)
    guide[::2, ::2] = 255.0  # isolated pixels of a colour far from every sample's
    out = segpost.joint_bilateral_upsample(coarse, guide, sigma_spatial=2, sigma_color=1)
    assert np.isfinite(out).all()
    lo, hi = coarse.reshape(4, -1).min(1), coarse.reshape(4, -1).max(1)
    assert (out >= lo[:, None, None]).all() and (out <= hi[:, None, None]).all()
    assert (np.abs(out).reshape(4, -1).max(1) > 0).all()


# --- right inputs refused or mishandled -----------------------------------------------------------------------

def test_big_endian_label_maps():
    pred = RNG.integers(0, 4, (16, 16)).astype(">u2")
    target = RNG.integers(0, 4, (16, 16)).astype(">i4")
    expected = segpost.confusion_matrix(pred.astype(np.int64), target.astype(np.int64), 4)
    np.testing.assert_array_equal(segpost.confusion_matrix(pred, target, 4), expected)
    metrics = segpost.SegMetrics(4)
    metrics.update(pred, target)
    np.testing.assert_array_equal(metrics.confusion, expected)


def test_big_endian_float_inputs():
    expected = segpost.crf_refine(IMAGE, LOGITS)
    np.testing.assert_array_equal(segpost.crf_refine(IMAGE, LOGITS.astype(">f4")), expected)


def test_half_precision_probabilities_are_accepted():
    # A softmax under AMP: summed in float16, as the check once did, its
    # rounding exceeds the tolerance (float64 sums are within 4e-4).
    import torch

    probs = torch.softmax(torch.from_numpy(RNG.normal(scale=4, size=(150, 16, 16))).half(), dim=0)
    assert np.abs(probs.numpy().sum(0) - 1).max() > 1e-3
    labels = segpost.crf_refine(RNG.integers(0, 255, (64, 64, 3), dtype=np.uint8), probs=probs)
    assert labels.shape == (64, 64)


@pytest.mark.parametrize("size, stride", [((40, 64), 32), ((33, 65), 16), ((100, 30), 32), ((17, 513), 8)])
def test_scores_of_any_output_stride_fit(size, stride):
    height, width = size
    for h, w in {(-(-height // stride), -(-width // stride)), (max(1, height // stride), max(1, width // stride)),
                 ((height - 1) // stride + 1, (width - 1) // stride + 1)}:
        image = RNG.integers(0, 255, (height, width, 3), dtype=np.uint8)
        logits = RNG.normal(size=(3, h, w)).astype(np.float32)
        assert segpost.crf_refine(image, logits).shape == size


def test_transposed_scores_are_still_refused():
    image = RNG.integers(0, 255, (256, 64, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="transposed"):
        segpost.crf_refine(image, RNG.normal(size=(3, 8, 32)).astype(np.float32))


@pytest.mark.parametrize("raw, refused", [("inf", False), ("64", False), ("abc", True), ("nan", True), ("-1", True),
                                          ("0", True)])
def test_max_memory_environment_variable(monkeypatch, raw, refused):
    monkeypatch.setenv("SEGPOST_MAX_MEMORY_GB", raw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert segpost.crf_refine(IMAGE, LOGITS).shape == (32, 32)
    assert any("SEGPOST_MAX_MEMORY_GB" in str(w.message) for w in caught) == refused


def test_max_memory_environment_variable_still_limits(monkeypatch):
    monkeypatch.setenv("SEGPOST_MAX_MEMORY_GB", "1e-6")
    with pytest.raises(MemoryError, match="SEGPOST_MAX_MEMORY_GB"):
        segpost.crf_refine(IMAGE, LOGITS)


@pytest.mark.parametrize("call", [
    lambda: segpost.bilateral_filter(IMAGE, 3.0, 10.0),
    lambda: segpost.joint_bilateral_upsample(LOGITS, IMAGE, sigma_spatial=2.0, sigma_color=10.0),
    lambda: segpost.resize_logits(LOGITS, (64, 64)),
])
def test_every_allocating_function_obeys_the_memory_limit(monkeypatch, call):
    monkeypatch.setenv("SEGPOST_MAX_MEMORY_GB", "1e-5")
    with pytest.raises(MemoryError, match="needs about .* GiB, above the limit .* SEGPOST_MAX_MEMORY_GB"):
        call()


def test_a_huge_resize_is_refused_before_allocating(monkeypatch):
    """20000 x 20000 x 21 floats (34 GiB): refused at once, not after torch allocated what it could."""
    monkeypatch.setenv("SEGPOST_MAX_MEMORY_GB", "16")
    with pytest.raises(MemoryError, match="resize_logits to 20000x20000"):
        segpost.resize_logits(np.zeros((21, 4, 4), np.float32), (20000, 20000))


# --- the probe list: the right exception and a message that names the problem -----------------------------------

@pytest.mark.parametrize("call, error, fragment", [
    (lambda: segpost.crf_refine(IMAGE, LOGITS, iterations=2**40), ValueError, "iterations"),
    (lambda: segpost.DenseCRF(np.zeros((3, 8, 8), np.float32)).inference(2**31), ValueError, "iterations"),
    (lambda: dcrf_utils.unary_from_labels(np.zeros((4, 4), np.int32), 1, 0.5), ValueError, "n_labels"),
    (lambda: segpost.joint_bilateral_upsample(LOGITS, RNG.uniform(size=(32, 32, 70)), sigma_spatial=2,
                                              sigma_color=0.1), ValueError, "channels"),
    (lambda: segpost.bilateral_filter(IMAGE, sigma_spatial=3, sigma_color=1e-40), ValueError, "sigma_color"),
    (lambda: segpost.bilateral_filter(IMAGE, sigma_spatial=1e-50, sigma_color=10), ValueError, "sigma_spatial"),
    (lambda: segpost.DenseCRF(np.zeros((3, 8, 8), np.float32)).add_gaussian(1e-50), ValueError, "sigma"),
    (lambda: segpost.DenseCRF(np.zeros((3, 8, 8), np.float32)).add_bilateral(IMAGE[:8, :8], 3, 1e-40), ValueError,
     "sigma_color"),
    (lambda: segpost.crf_refine([[1, 2], [3]], LOGITS), TypeError, "image"),
    (lambda: segpost.crf_refine(IMAGE, LOGITS, params={"bi_rgb": 1e-9}), ValueError, "bi_rgb must be at least"),
    (lambda: segpost.crf_refine(IMAGE.astype(np.float32), LOGITS), ValueError,
     "image of a floating-point dtype must hold"),
    (lambda: _drop_in_gaussian((0, 1)), ValueError, r"sxy .* got \(0, 1\)"),
    (lambda: segpost.pad_to_multiple([[1, 2, 3]], 2), None, None),
    (lambda: segpost.crop_to([[1, 2, 3], [4, 5, 6]], (1, 2)), None, None),
])
def test_probe_list(call, error, fragment):
    if error is None:  # works
        call()
        return
    with pytest.raises(error, match=fragment):
        call()


def _drop_in_gaussian(sxy):
    crf = dcrf.DenseCRF2D(8, 8, 3)
    crf.setUnaryEnergy(np.ones((3, 64), np.float32))
    crf.addPairwiseGaussian(sxy=sxy, compat=3)


def test_ignore_index_beyond_int64_is_harmless():
    pred = np.array([0, 1, 2, 1])
    for ignore in (2**63, 2**64, -(2**63) - 1):
        np.testing.assert_array_equal(segpost.confusion_matrix(pred, pred, 3, ignore_index=ignore),
                                      np.diag([1, 2, 1]))
