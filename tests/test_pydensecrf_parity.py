"""segpost against pydensecrf, the reference implementation (installed by `make test`)."""
import os

import numpy as np
import pytest
from skimage import data

import segpost
import segpost.compat.pydensecrf.densecrf as sdcrf
from segpost.compat.pydensecrf import utils as sutils
from segpost.benchmarking import pydensecrf_labels
from segpost.upsample import resize_logits
from oracles import probe


def _reference():
    try:
        import pydensecrf.densecrf as dcrf
        import pydensecrf.utils as utils
    except ImportError:
        if os.environ.get("CI"):
            raise  # CI installs it: a missing reference must fail, not skip
        pytest.skip("pydensecrf not installed (make test installs it)")
    return dcrf, utils


def _coarse_logits(image, classes, stride=8, seed=0):
    h, w = image.shape[:2]
    rng = np.random.default_rng(seed)
    return rng.normal(scale=2.0, size=(classes, -(-h // stride), -(-w // stride))).astype(np.float32)


@pytest.mark.parametrize("photo", ["astronaut", "coffee", "chelsea"])
@pytest.mark.parametrize("preset", ["deeplab", "pydensecrf"])
def test_crf_refine_agrees_with_pydensecrf_on_photos(photo, preset):
    _reference()
    image = getattr(data, photo)()
    logits = _coarse_logits(image, classes=8, seed=len(photo))
    params = segpost.CRFParams.coerce(preset)
    ours = segpost.crf_refine(image, logits, params=params)
    theirs = pydensecrf_labels(np.ascontiguousarray(image), logits, params)
    assert (ours == theirs).mean() >= 0.995


def _readme_pipeline(dcrf, utils, image, probs, compat_kind, normalization):
    h, w = image.shape[:2]
    nlabels = probs.shape[0]
    d = dcrf.DenseCRF2D(w, h, nlabels)
    d.setUnaryEnergy(utils.unary_from_softmax(probs))
    if compat_kind == "potts":
        compat = 3
    elif compat_kind == "diag":
        compat = -np.linspace(1, 3, nlabels).astype(np.float32)
    else:
        compat = (np.ones((nlabels, nlabels)) - np.eye(nlabels)).astype(np.float32) * 2
    d.addPairwiseGaussian(sxy=(3, 2), compat=compat, kernel=dcrf.DIAG_KERNEL, normalization=normalization)
    feats = utils.create_pairwise_bilateral(sdims=(40, 60), schan=(13, 15, 11), img=image, chdim=2)
    d.addPairwiseEnergy(feats, compat=10, kernel=dcrf.FULL_KERNEL, normalization=normalization)
    q = np.array(d.inference(3))
    q0, tmp1, tmp2 = d.startInference()
    for _ in range(2):
        d.stepInference(q0, tmp1, tmp2)
    return q, np.array(q0), d.klDivergence(q0)


@pytest.mark.parametrize("compat_kind", ["potts", "diag", "matrix"])
@pytest.mark.parametrize("norm_name", ["NORMALIZE_SYMMETRIC", "NORMALIZE_BEFORE", "NORMALIZE_AFTER", "NO_NORMALIZATION"])
def test_drop_in_gives_pydensecrf_outputs(compat_kind, norm_name):
    dcrf, utils = _reference()
    image = np.ascontiguousarray(data.coffee()[::4, ::3])  # 100 x 200: width != height
    probs = resize_logits(np.random.default_rng(1).dirichlet(np.ones(4), size=(13, 25)).transpose(2, 0, 1).astype(np.float32), image.shape[:2])
    ref = _readme_pipeline(dcrf, utils, image, probs, compat_kind, getattr(dcrf, norm_name))
    ours = _readme_pipeline(sdcrf, sutils, image, probs, compat_kind, getattr(sdcrf, norm_name))
    # Same arithmetic up to float rounding (we elevate in double); the raw sums
    # of NO_NORMALIZATION amplify rounding at a handful of pixels.
    for q_ours, q_ref in ((ours[0], ref[0]), (ours[1], ref[1])):
        assert (np.abs(q_ours - q_ref) <= 1e-3).mean() >= 0.9995
        assert np.abs(q_ours - q_ref).max() <= 0.05
    assert (ours[0].argmax(0) == ref[0].argmax(0)).mean() >= 0.999
    assert ours[2] == pytest.approx(ref[2], rel=1e-3, abs=1.0)


def test_utils_match_pydensecrf():
    _, utils = _reference()
    rng = np.random.default_rng(0)
    sm = rng.dirichlet(np.ones(3), size=(4, 5)).transpose(2, 0, 1)
    np.testing.assert_allclose(sutils.unary_from_softmax(sm), utils.unary_from_softmax(sm), rtol=1e-6)
    np.testing.assert_allclose(sutils.unary_from_softmax(sm, scale=0.8), utils.unary_from_softmax(sm, scale=0.8), rtol=1e-6)
    labels = rng.integers(0, 4, size=(6, 7))
    for zero_unsure in (True, False):
        n = 4 if zero_unsure else 4
        lab = labels if zero_unsure else labels % n
        np.testing.assert_allclose(
            sutils.unary_from_labels(lab, n, 0.7, zero_unsure=zero_unsure),
            utils.unary_from_labels(lab, n, 0.7, zero_unsure=zero_unsure), rtol=1e-6,
        )
    np.testing.assert_allclose(sutils.create_pairwise_gaussian((3, 5), (4, 6)), utils.create_pairwise_gaussian((3, 5), (4, 6)))
    img = rng.integers(0, 255, size=(4, 6, 3)).astype(np.uint8)
    np.testing.assert_allclose(
        sutils.create_pairwise_bilateral((3, 5), (10, 11, 12), img, chdim=2),
        utils.create_pairwise_bilateral((3, 5), (10, 11, 12), img, chdim=2), rtol=1e-6,
    )
    gray = img[..., 0]
    np.testing.assert_allclose(
        sutils.create_pairwise_bilateral((3, 5), 10, gray), utils.create_pairwise_bilateral((3, 5), 10, gray), rtol=1e-6
    )


def test_width_comes_first_in_densecrf2d():
    # A 10 x 30 (H x W) image: DenseCRF2D(W, H, n) with the unary flattened in C order.
    image = np.zeros((10, 30, 3), np.uint8)
    image[:, 15:] = 200
    d = sdcrf.DenseCRF2D(30, 10, 2)
    u = np.zeros((2, 300), np.float32)
    u[1] = 0.1  # a slight preference for label 0 everywhere
    u.reshape(2, 10, 30)[1, :, 15:] = -1.0  # the right half prefers label 1
    d.setUnaryEnergy(u)
    d.addPairwiseBilateral(sxy=5, srgb=10, rgbim=image, compat=5)
    labels = np.argmax(d.inference(5), axis=0).reshape(10, 30)
    assert (labels[:, :15] == 0).all() and (labels[:, 15:] == 1).all()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda d: d.setUnaryEnergy(np.zeros((2, 12), np.float32)), "shape"),
        (lambda d: d.setUnaryEnergy(np.zeros((3, 12), np.float64)), "float32"),
        (lambda d: d.setUnaryEnergy(np.zeros((12, 3), np.float32).T), "C-contiguous"),
        (lambda d: d.setUnaryEnergy(np.full((3, 12), np.nan, np.float32)), "finite"),
        (lambda d: d.addPairwiseBilateral(3, 13, np.zeros((4, 3, 3), np.uint8), 10), "Need \\(H,W,3\\)"),
        (lambda d: d.addPairwiseBilateral(3, 13, np.zeros((3, 4, 3), np.float32), 10), "uint8"),
        (lambda d: d.addPairwiseGaussian(3, np.ones(3)), "float32"),
        (lambda d: d.addPairwiseGaussian(3, np.ones(4, np.float32)), "shape"),
        (lambda d: d.addPairwiseGaussian(3, np.ones((3, 3, 3), np.float32)), "dimension >2"),
        (lambda d: d.addPairwiseEnergy(np.zeros((2, 11), np.float32), 3), "shape"),
        (lambda d: d.addPairwiseGaussian(3, 3, kernel=7), "kernel"),
        (lambda d: d.stepInference(np.zeros((3, 11), np.float32), None, None), "shape"),
    ],
)
def test_drop_in_raises_value_error_at_the_wrong_call(call, match):
    d = sdcrf.DenseCRF2D(4, 3, 3)
    with pytest.raises(ValueError, match=match):
        call(d)


# --- the drop-in's bad inputs -------------------------------------------------------------------------------

@pytest.mark.parametrize("call, error, fragment", [
    (lambda: sutils.unary_from_labels(np.zeros((4, 4), np.int32), 1, 0.5), ValueError, "n_labels"),
    (lambda: _drop_in_gaussian((0, 1)), ValueError, r"sxy .* got \(0, 1\)"),
])
def test_probe_list(call, error, fragment):
    probe(call, error, fragment)


def _drop_in_gaussian(sxy):
    crf = sdcrf.DenseCRF2D(8, 8, 3)
    crf.setUnaryEnergy(np.ones((3, 64), np.float32))
    crf.addPairwiseGaussian(sxy=sxy, compat=3)
