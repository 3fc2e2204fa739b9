"""segpost.DenseCRF on a CT-like volume with voxel spacing against pydensecrf's general DenseCRF on the same features."""
import numpy as np
import pytest

import segpost
from oracles import need
from segpost._phantoms import ct_phantom, simulate_volume_network

SPACING = (3.0, 0.8, 0.8)


def _case(shape, seed):
    phantom = ct_phantom(shape, spacing=SPACING, seed=seed)
    logits = segpost.resize_logits(simulate_volume_network(phantom.labels, 3, noise=1.2, seed=seed), shape)
    logits -= logits.max(axis=0)
    probs = np.exp(logits) / np.exp(logits).sum(axis=0)
    return phantom, -np.log(np.clip(probs, 1e-5, None)).astype(np.float32)


def _pydensecrf(phantom, unary, smooth, appearance, *, segpost_order):
    """pydensecrf as its users write it for a volume: bandwidths in voxels, chdim=-1 for one channel."""
    dcrf = need("pydensecrf.densecrf")
    utils = need("pydensecrf.utils")
    (s_mm, s_compat), (a_mm, a_hu, a_compat) = smooth, appearance
    voxels = np.asarray(phantom.spacing)
    shape = phantom.volume.shape
    f_smooth = utils.create_pairwise_gaussian(sdims=tuple(s_mm / voxels), shape=shape)
    f_app = utils.create_pairwise_bilateral(sdims=tuple(a_mm / voxels), schan=(a_hu,), img=phantom.volume, chdim=-1)
    if segpost_order:  # segpost orders positions last axis first (x, y, z)
        f_smooth, f_app = f_smooth[::-1], np.concatenate([f_app[:3][::-1], f_app[3:]])
    crf = dcrf.DenseCRF(int(np.prod(shape)), unary.shape[0])
    crf.setUnaryEnergy(np.ascontiguousarray(unary.reshape(unary.shape[0], -1)))
    crf.addPairwiseEnergy(np.ascontiguousarray(f_smooth), compat=s_compat)
    crf.addPairwiseEnergy(np.ascontiguousarray(f_app), compat=a_compat)
    return np.array(crf.inference(5)).reshape(unary.shape)


def _segpost(phantom, unary, smooth, appearance, method="auto"):
    (s_mm, s_compat), (a_mm, a_hu, a_compat) = smooth, appearance
    crf = segpost.DenseCRF(unary)
    crf.add_gaussian(s_mm, compat=s_compat, spacing=phantom.spacing, method=method)
    crf.add_bilateral(phantom.volume, a_mm, a_hu, compat=a_compat, spacing=phantom.spacing, channel_axis=None)
    return crf.inference(5)


@pytest.mark.parametrize("seed, smooth, appearance", [
    (0, (1.5, 1.0), (5.0, 10.0, 3.0)),     # bench_volumes.py's kernels
    (1, (3.0, 3.0), (10.0, 20.0, 5.0)),    # wider, stronger kernels
])
def test_labels_agree_with_pydensecrf_on_a_ct_phantom(seed, smooth, appearance):
    phantom, unary = _case((12, 64, 80), seed)
    # The default on a volume: the smoothness kernel exact and separable, where pydensecrf's lattice
    # approximates it; the labels agree all the same.
    ours = _segpost(phantom, unary, smooth, appearance)
    theirs = _pydensecrf(phantom, unary, smooth, appearance, segpost_order=False)
    ordered = _pydensecrf(phantom, unary, smooth, appearance, segpost_order=True)
    assert ours.shape == unary.shape
    assert (ours.argmax(0) == theirs.argmax(0)).mean() >= 0.999
    assert (ours.argmax(0) == ordered.argmax(0)).mean() >= 0.999
    # On the lattice, as pydensecrf, with its features in the same order: the same lattices, the same
    # marginals up to float rounding.
    on_lattice = _segpost(phantom, unary, smooth, appearance, method="lattice")
    assert (on_lattice.argmax(0) == ordered.argmax(0)).mean() >= 0.9999
    np.testing.assert_allclose(on_lattice, ordered, atol=2e-3)


def test_the_crf_sharpens_the_phantom():
    # The refined labels are closer to the truth than the network's: organ and lesion Dice both rise.
    phantom, unary = _case((16, 96, 96), 2)
    refined = _segpost(phantom, unary, (1.5, 1.0), (5.0, 10.0, 3.0)).argmax(0)
    before = unary.argmin(0)

    def dice(pred, c):
        p, t = pred == c, phantom.labels == c
        return 2 * np.count_nonzero(p & t) / (np.count_nonzero(p) + np.count_nonzero(t))

    assert dice(refined, 1) > dice(before, 1) and dice(refined, 2) > dice(before, 2)


def test_phantom_is_ct_like():
    phantom = ct_phantom((16, 64, 64), seed=3)
    assert phantom.volume.dtype == np.float32 and phantom.labels.dtype == np.uint8
    assert phantom.spacing == SPACING
    counts = np.bincount(phantom.labels.ravel(), minlength=3)
    assert counts[1] > 3 * counts[2] > 0  # an organ and a smaller lesion inside it
    organ, lesion = phantom.volume[phantom.labels == 1], phantom.volume[phantom.labels == 2]
    assert 90 < np.median(organ) < 130 and 30 < np.median(lesion) < 70  # HU, a hypodense lesion
    assert phantom.volume.min() < -900  # air outside the body
    np.testing.assert_array_equal(ct_phantom((16, 64, 64), seed=3).volume, phantom.volume)  # reproducible
