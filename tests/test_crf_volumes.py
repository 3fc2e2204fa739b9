"""crf_refine on volumes: (C, d, h, w) scores, (D, H, W[, M]) scans in their own units, voxel spacing."""
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import segpost
from segpost.crf.refine import _crf_refine


def _scan(rng, shape, modalities=0):
    """A noisy two-region scan in HU-like units."""
    scan = rng.normal(40, 15, size=shape + ((modalities,) if modalities else ())).astype(np.float32)
    d, h, w = shape
    scan[:, h // 4: 3 * h // 4, w // 4: 3 * w // 4] += 70
    return scan


@st.composite
def volume_cases(draw):
    shape = draw(st.sampled_from([(5, 12, 14), (8, 16, 16), (6, 20, 10)]))
    stride = draw(st.sampled_from([(1, 1, 1), (1, 2, 2), (2, 4, 4)]))
    classes = draw(st.integers(2, 5))
    spacing = draw(st.sampled_from([None, (3.0, 0.8, 0.8), (1.0, 1.0, 1.0), (2.5, 0.7, 0.9)]))
    modalities = draw(st.sampled_from([0, 1, 2]))
    seed = draw(st.integers(0, 1000))
    align_corners = draw(st.booleans())
    return shape, stride, classes, spacing, modalities, seed, align_corners


def _coarse_shape(shape, stride, align_corners):
    if align_corners:
        return tuple((n - 1) // s + 1 for n, s in zip(shape, stride))
    return tuple(-(-n // s) for n, s in zip(shape, stride))


@given(volume_cases())
def test_volume_refine_is_the_general_crf_on_the_upsampled_unary(case):
    # crf_refine on a volume = DenseCRF with add_gaussian / add_bilateral in spacing units on the
    # trilinearly upsampled scores (torch's interpolate conventions), bit for bit.
    shape, stride, classes, spacing, modalities, seed, align_corners = case
    rng = np.random.default_rng(seed)
    scan = _scan(rng, shape, modalities)
    logits = (rng.normal(size=(classes, *_coarse_shape(shape, stride, align_corners))) * 3).astype(np.float32)
    params = segpost.CRFParams(pos_weight=2, pos_xy=1.5, bi_weight=3, bi_xy=4, bi_rgb=12, iterations=4)
    labels, probs = segpost.crf_refine(scan, logits, params=params, spacing=spacing, align_corners=align_corners,
                                       return_probs=True, prune=False)
    full = torch.nn.functional.interpolate(torch.from_numpy(logits)[None], size=shape, mode="trilinear",
                                           align_corners=align_corners)[0].numpy()
    crf = segpost.DenseCRF(-full)
    crf.add_gaussian(1.5, compat=2.0, spacing=spacing)
    crf.add_bilateral(scan, 4, 12, compat=3.0, spacing=spacing, channel_axis=-1 if modalities else None)
    want = crf.inference(4)
    np.testing.assert_array_equal(probs, want)
    np.testing.assert_array_equal(labels, want.argmax(0))
    assert labels.shape == shape and labels.dtype == np.int64


@given(volume_cases())
def test_volume_device_path_equals_the_cpu_path(case):
    shape, stride, classes, spacing, modalities, seed, align_corners = case
    rng = np.random.default_rng(seed)
    scan = _scan(rng, shape, modalities)
    logits = (rng.normal(size=(classes, *_coarse_shape(shape, stride, align_corners))) * 3).astype(np.float32)
    params = segpost.CRFParams.ct().replace(iterations=4)
    want_labels, want_probs = _crf_refine(scan, logits, None, params, 4, align_corners, True, False, spacing=spacing)
    # torch layout: (M, D, H, W)
    tensor_scan = torch.from_numpy(np.moveaxis(scan, -1, 0).copy() if modalities else scan)
    labels, probs = _crf_refine(tensor_scan, torch.from_numpy(logits), None, params, 4, align_corners, True, False,
                                spacing=spacing, device=torch.device("cpu"))
    assert isinstance(labels, torch.Tensor) and labels.shape == shape
    assert (labels.numpy() == want_labels).mean() >= 0.999
    np.testing.assert_allclose(probs.numpy(), want_probs, atol=2e-4)


def test_volume_layouts_and_types_agree():
    rng = np.random.default_rng(0)
    scan = _scan(rng, (6, 16, 16), 2)
    logits = rng.normal(size=(3, 6, 4, 4)).astype(np.float32)
    want = segpost.crf_refine(scan, logits, params="ct", spacing=(3, 0.8, 0.8))
    got = segpost.crf_refine(torch.from_numpy(np.moveaxis(scan, -1, 0).copy()), torch.from_numpy(logits),
                             params="ct", spacing=(3, 0.8, 0.8))
    assert isinstance(got, torch.Tensor)
    np.testing.assert_array_equal(got.numpy(), want)
    # Spacing matters: millimetres, slice thickness first.
    other = segpost.crf_refine(scan, logits, params="ct", spacing=(0.8, 0.8, 3))
    assert not np.array_equal(other, want)


def test_volume_intensities_are_read_in_their_own_units():
    # A CT in HU (int16, negative values) is accepted as a volume; as a 2-D image the 0..255 rule refuses it.
    rng = np.random.default_rng(1)
    ct = np.round(_scan(rng, (4, 16, 16)) - 1000).astype(np.int16)
    logits = rng.normal(size=(2, 4, 8, 8)).astype(np.float32)
    assert segpost.crf_refine(ct, logits, params="ct").shape == (4, 16, 16)
    with pytest.raises(ValueError, match="0..255"):
        segpost.crf_refine(ct[0], logits[:, 0])
    # The scan's units, not rescaled: multiplying the scan and bi_rgb by 10 changes nothing.
    params = segpost.CRFParams.ct()
    a = segpost.crf_refine(ct.astype(np.float32), logits, params=params)
    b = segpost.crf_refine(ct.astype(np.float32) * 10, logits, params=params.replace(bi_rgb=params.bi_rgb * 10))
    assert (a == b).mean() >= 0.999


@pytest.mark.parametrize("case, error, match", [
    ("gray image for volume scores", ValueError, r"\(D, H, W\) or \(D, H, W, M\)"),
    ("volume for image scores", ValueError, "larger than the image"),  # read as an (H, W, C) image
    ("5-D scores", ValueError, r"\(C, d, h, w\) for a volume"),
    ("spacing of two", ValueError, "spacing must be a positive number or 3"),
    ("negative spacing", ValueError, "spacing"),
    ("transposed volume", ValueError, "no whole output stride"),
    ("larger", ValueError, "larger than the image"),
    # Misleading before: blamed spacing, the channel count or the scores' size.
    ("image scores with a volume's spacing", ValueError, r"a \(D, H, W\) scan needs \(C, d, h, w\) logits"),
    ("image scores for a volume", ValueError, r"a \(D, H, W\) scan\? it needs \(C, d, h, w\) scores"),
    ("torch scan channels last", ValueError, r"^torch scans are \(M, D, H, W\).*permute\(3, 0, 1, 2\)"),
    ("numpy scan channels first", ValueError, r"an \(M, D, H, W\) array\? pass np.moveaxis\(scan, 0, -1\)"),
    ("numpy scan channels first, 16 wide", ValueError, r"numpy scans are \(D, H, W, M\).*np.moveaxis\(scan, 0, -1\)"),
])
def test_volume_bad_inputs(case, error, match):
    rng = np.random.default_rng(2)
    scan = _scan(rng, (6, 32, 16))
    logits = rng.normal(size=(2, 6, 8, 4)).astype(np.float32)
    calls = {
        "gray image for volume scores": lambda: segpost.crf_refine(scan[0], logits),
        "volume for image scores": lambda: segpost.crf_refine(scan, logits[:, 0]),
        "5-D scores": lambda: segpost.crf_refine(scan, logits[None]),
        "spacing of two": lambda: segpost.crf_refine(scan, logits, spacing=(1, 2)),
        "negative spacing": lambda: segpost.crf_refine(scan, logits, spacing=-1),
        "transposed volume": lambda: segpost.crf_refine(scan, np.ascontiguousarray(logits.transpose(0, 3, 2, 1))),
        "larger": lambda: segpost.crf_refine(scan[:, :4], logits),
        "image scores with a volume's spacing": lambda: segpost.crf_refine(scan, logits[:, 0], spacing=(3, 1, 1)),
        "image scores for a volume": lambda: segpost.crf_refine(_scan(rng, (6, 32, 24)), logits[:, 0]),
        "torch scan channels last": lambda: segpost.crf_refine(torch.from_numpy(np.stack([scan, scan], -1)),
                                                               torch.from_numpy(logits)),
        "numpy scan channels first": lambda: segpost.crf_refine(np.stack([_scan(rng, (6, 32, 24))] * 2), logits),
        "numpy scan channels first, 16 wide": lambda: segpost.crf_refine(np.stack([scan] * 2), logits),
    }
    with pytest.raises(error, match=match):
        calls[case]()


def test_channels_last_volume_logits_are_warned_about():
    # (d, h, w, C) logits also read as (C', d', h', w') with whole strides: warned, as for images.
    from segpost._phantoms import ct_phantom, simulate_volume_network

    phantom = ct_phantom((16, 64, 64), seed=3)
    logits = simulate_volume_network(phantom.labels, 3, stride=(1, 4, 4), seed=3)
    with pytest.warns(UserWarning, match=r"np.moveaxis\(logits, -1, 0\)"):
        segpost.crf_refine(phantom.volume, np.moveaxis(logits, 0, -1), spacing=phantom.spacing, iterations=1)
    # A cubic output of a thick-slice scan in the right layout is not: read classes-last it would have
    # 3 slices for 32 (no whole stride divides them), where the layout read divides every axis.
    phantom = ct_phantom((32, 128, 128), seed=3)
    logits = simulate_volume_network(phantom.labels, 3, stride=(1, 4, 4), seed=3)
    assert logits.shape == (3, 32, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        segpost.crf_refine(phantom.volume, logits, spacing=phantom.spacing, iterations=1)
        # Nor full-resolution scores (predict_volume's probabilities), which read classes-last would be at
        # strides (8, 4, 1), nor one sigmoid channel (no classes axis to misplace).
        small = ct_phantom((16, 64, 64), seed=3)
        segpost.crf_refine(small.volume, np.full((2, 16, 64, 64), 2.0, np.float32), spacing=small.spacing,
                           iterations=1)
        segpost.crf_refine(small.volume, np.zeros((1, 16, 16, 16), np.float32), spacing=small.spacing,
                           iterations=1)
