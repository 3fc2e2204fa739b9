"""Upsampling utilities against torch.nn.functional.interpolate and brute force."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from segpost import (
    crop_to, deeplab_size, joint_bilateral_upsample, pad_to_multiple, resize_labels, resize_logits, upsample_argmax,
)
from oracles import probe

SIZES = [1, 7, 65, 513, 769]


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size_in, size_out", [((7, 5), (513, 769)), ((65, 65), (513, 513)), ((1, 1), (7, 7)),
                                               ((33, 17), (7, 1)), ((513, 769), (65, 97))])
def test_resize_logits_equals_torch(align_corners, size_in, size_out):
    x = np.random.default_rng(0).normal(size=(3, *size_in)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(x)[None], size=size_out, mode="bilinear", align_corners=align_corners)[0]
    np.testing.assert_array_equal(resize_logits(x, size_out, align_corners=align_corners), expected.numpy())
    out_t = resize_logits(torch.from_numpy(x), size_out, align_corners=align_corners)
    assert isinstance(out_t, torch.Tensor) and torch.equal(out_t, expected)
    batch = np.stack([x, 2 * x])
    assert resize_logits(batch, size_out, align_corners=align_corners, batch=True).shape == (2, 3, *size_out)


@given(st.sampled_from(SIZES), st.sampled_from(SIZES), st.sampled_from(SIZES), st.sampled_from(SIZES),
       st.sampled_from([np.uint8, np.uint16, np.int32, np.int64]))
def test_resize_labels_equals_torch_nearest_exact(h, w, hh, ww, dtype):
    labels = np.random.default_rng(h * w).integers(0, 255, size=(h, w)).astype(dtype)
    expected = F.interpolate(torch.from_numpy(labels.astype(np.float32))[None, None], size=(hh, ww),
                             mode="nearest-exact")[0, 0].numpy().astype(dtype)
    out = resize_labels(labels, (hh, ww))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(resize_labels(torch.from_numpy(labels.astype(np.int64)), (hh, ww)).numpy(), expected)


def test_odd_sizes_round_trip_exactly():
    for h in SIZES:
        labels = np.arange(h * 3).reshape(h, 3)
        np.testing.assert_array_equal(resize_labels(resize_labels(labels, (4 * h, 6)), (h, 3)), labels)
    assert [deeplab_size(513, 1 / 8), deeplab_size(65, 8), deeplab_size(769, 0.5)] == [65, 513, 385]


def test_pad_and_crop_round_trip():
    image = np.random.default_rng(0).random((3, 513, 769))
    padded, size = pad_to_multiple(image, 32)
    assert padded.shape == (3, 544, 800) and size == (513, 769)
    assert (padded[:, 513:, :] == 0).all() and (padded[:, :, 769:] == 0).all()
    np.testing.assert_array_equal(crop_to(padded, size), image)
    t_padded, t_size = pad_to_multiple(torch.from_numpy(image), 32, value=-1.0)
    assert t_padded.shape == (3, 544, 800) and (t_padded[:, 513:, :] == -1).all()
    assert torch.equal(crop_to(t_padded, t_size), torch.from_numpy(image))
    same, _ = pad_to_multiple(np.zeros((4, 64, 64)), 32)
    assert same.shape == (4, 64, 64)


@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 90), st.integers(1, 90), st.booleans(), st.integers(1, 40))
def test_upsample_argmax_equals_full_resolution_argmax(h, w, hh, ww, align_corners, block_rows):
    logits = np.random.default_rng(h * 100 + w).normal(size=(6, h, w)).astype(np.float32)
    full = resize_logits(logits, (hh, ww), align_corners=align_corners).argmax(0)
    out = upsample_argmax(logits, (hh, ww), align_corners=align_corners, block_rows=block_rows)
    assert out.dtype == np.int64 and out.shape == (hh, ww)
    np.testing.assert_array_equal(out, full)


def test_joint_bilateral_upsample_follows_guide_edges():
    # Coarse scores of a step edge that the coarse grid blurs; the guide has the sharp edge.
    guide = np.zeros((64, 64, 3), np.uint8)
    guide[:, 29:] = 200
    truth = (np.arange(64) >= 29)[None, :].repeat(64, 0)
    coarse = np.stack([1 - truth, truth]).astype(np.float32).reshape(2, 8, 8, 8, 8).mean(axis=(2, 4))
    jbu = joint_bilateral_upsample(coarse, guide, sigma_spatial=8, sigma_color=10)
    bilinear = resize_logits(coarse, (64, 64))
    assert (jbu.argmax(0) == truth).mean() > (bilinear.argmax(0) == truth).mean()
    assert (jbu.argmax(0) == truth).mean() > 0.99
    assert jbu.shape == (2, 64, 64) and jbu.dtype == np.float32


def test_joint_bilateral_upsample_matches_brute_force():
    from skimage import data

    rng = np.random.default_rng(0)
    guide = data.astronaut()[100:124, 200:220]
    h, w, sy, sx = 24, 20, 6, 5
    coarse = rng.normal(size=(2, sy, sx)).astype(np.float32)
    out = joint_bilateral_upsample(coarse, guide, sigma_spatial=4, sigma_color=30)
    # brute force: exact Gaussian weights over the coarse samples at their half-pixel centres
    ys = (np.arange(sy) + 0.5) * h / sy - 0.5
    xs = (np.arange(sx) + 0.5) * w / sx - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    qc = guide[np.clip(np.rint(yy).astype(int), 0, h - 1), np.clip(np.rint(xx).astype(int), 0, w - 1)].reshape(-1, 3)
    fy, fx = np.mgrid[0:h, 0:w]
    d2 = ((fy.ravel()[:, None] - yy.ravel()) ** 2 + (fx.ravel()[:, None] - xx.ravel()) ** 2) / 16.0
    d2 += ((guide.reshape(-1, 3)[:, None, :].astype(float) - qc[None]) ** 2).sum(-1) / 900.0
    wgt = np.exp(-0.5 * d2)
    exact = (wgt @ coarse.reshape(2, -1).T / wgt.sum(1, keepdims=True)).T.reshape(2, h, w)
    # the lattice's documented mean-error bound for d = 5 (tests/test_lattice.py): 0.1 of the value range
    assert np.abs(out - exact).mean() <= 0.1 * (coarse.max() - coarse.min())


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: resize_logits(np.zeros((2, 3), np.float32), (4, 4)), ValueError, "C, h, w"),
        (lambda: resize_logits(np.zeros((2, 3, 3), np.int64), (4, 4)), TypeError, "floating"),
        (lambda: resize_logits(np.zeros((2, 3, 3), np.float32), (0, 4)), ValueError, "size"),
        (lambda: resize_logits(np.zeros((2, 3, 3), np.float32), (4.5, 4)), ValueError, "size"),
        (lambda: resize_logits(np.full((2, 3, 3), np.nan, np.float32), (4, 4)), ValueError, "finite"),
        (lambda: resize_labels(np.zeros((3, 3), np.float32), (4, 4)), TypeError, "never resize labels bilinearly"),
        (lambda: resize_labels(np.zeros(3, np.uint8), (4, 4)), ValueError, "h, w"),
        (lambda: deeplab_size(0, 2), ValueError, "dim"),
        (lambda: deeplab_size(5, -1), ValueError, "scale"),
        (lambda: pad_to_multiple(np.zeros((3, 3)), 0), ValueError, "multiple"),
        (lambda: upsample_argmax(np.zeros((2, 3, 3), np.float32), (4, 4), block_rows=0), ValueError, "block_rows"),
        (lambda: joint_bilateral_upsample(np.zeros((2, 9, 9), np.float32), np.zeros((8, 8)), sigma_spatial=1,
                                          sigma_color=1), ValueError, "larger"),
        (lambda: joint_bilateral_upsample(np.zeros((2, 3, 3), np.float32), np.zeros((8, 8)), sigma_spatial=0,
                                          sigma_color=1), ValueError, "sigma_spatial"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@given(st.integers(1, 3), st.integers(1, 20), st.integers(1, 20), st.integers(1, 60), st.integers(1, 60),
       st.booleans(), st.booleans())
def test_point_major_resize_equals_torch(blocks, h, w, hh, ww, align_corners, negate):
    # The CRF's compiled resize (rows of 8k floats) against torch's interpolate.
    from segpost.upsample import _resize_points

    x = np.random.default_rng(h * 100 + w).normal(size=(8 * blocks, h, w)).astype(np.float32)
    got = _resize_points(x, (hh, ww), align_corners, negate=negate).reshape(hh, ww, -1).transpose(2, 0, 1)
    want = F.interpolate(torch.from_numpy(x)[None], size=(hh, ww), mode="bilinear", align_corners=align_corners)[0]
    # Weights can differ from torch's by an ulp when shrinking (its scale is rounded differently).
    np.testing.assert_allclose(got, -want.numpy() if negate else want.numpy(), atol=1e-5, rtol=1e-5)


def test_point_major_resize_rejects_bad_indices():
    from segpost import _C

    rows = np.zeros((4 * 4, 8), np.float32)
    lo = np.array([0, 1, 4], np.int64)  # 4 is out of range for 4 rows
    hi = np.array([1, 2, 3], np.int64)
    weight = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="out of range"):
        _C.resize_bilinear_points(rows, 4, 4, lo, hi, weight, hi, hi, weight, False)
    with pytest.raises(ValueError, match="multiple of 8"):
        _C.resize_bilinear_points(np.zeros((16, 5), np.float32), 4, 4, hi, hi, weight, hi, hi, weight, False)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shape, size", [((2, 3, 4), (7, 5)), ((2, 2, 5, 3), (3, 8)), ((1, 1, 1), (2, 3))])
def test_resize_logits_keeps_autograd_gradcheck(shape, size, align_corners):
    batch = len(shape) == 4  # (B, C, h, w): a batch must be said so
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out = resize_logits(x, size, align_corners=align_corners, batch=batch)
    assert out.requires_grad and out.dtype == torch.float64
    assert torch.autograd.gradcheck(lambda t: resize_logits(t, size, align_corners=align_corners, batch=batch), (x,))
    # float32 tensors: float32 out, the gradient still flows
    y = torch.randn(shape, requires_grad=True)
    resize_logits(y, size, align_corners=align_corners, batch=batch).sum().backward()
    assert y.grad is not None and y.grad.shape == y.shape


def test_pad_and_crop_keep_autograd_gradcheck():
    x = torch.randn(2, 5, 7, dtype=torch.float64, requires_grad=True)

    def round_trip(t):
        padded, size = pad_to_multiple(t, 4, value=1.5)
        return padded * padded.sum(), crop_to(padded, size)

    assert torch.autograd.gradcheck(round_trip, (x,))


def test_joint_bilateral_upsample_gradient_is_its_jacobian():
    # The output is a weighted average of the coarse scores: linear in them, so its Jacobian's column j is the
    # output for the j-th unit score (the per-class clip to the scores' range is inactive on a unit score).
    from skimage import data

    guide = data.astronaut()[:24, :24]
    coarse = torch.randn(2, 3, 3, dtype=torch.float32, requires_grad=True)
    options = dict(sigma_spatial=8, sigma_color=40)
    out = joint_bilateral_upsample(coarse, guide, **options)
    assert out.requires_grad and torch.equal(out.detach(), torch.from_numpy(
        joint_bilateral_upsample(coarse.detach().numpy(), guide, **options)))
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    (out * weights).sum().backward()
    expected = np.zeros(coarse.shape)
    for index in np.ndindex(*coarse.shape):
        unit = np.zeros(coarse.shape, np.float32)
        unit[index] = 1
        expected[index] = float((joint_bilateral_upsample(unit, guide, **options) * weights.numpy()).sum())
    np.testing.assert_allclose(coarse.grad.numpy(), expected, rtol=1e-4, atol=1e-4)


# --- inputs once refused, mishandled or turned into wrong numbers -------------------------------------------

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8)
LOGITS = RNG.normal(size=(3, 8, 8)).astype(np.float32)


def test_float64_beyond_float32_range_is_refused():
    with pytest.raises(ValueError, match="range|magnitude"):
        resize_logits(np.full((3, 8, 8), 1e39), (16, 16))


def test_joint_bilateral_upsample_stays_within_the_coarse_range():
    # A guide whose colours match no coarse sample near a pixel: the lattice
    # weight underflows there; the result must still be an average of the scores.
    coarse = RNG.normal(size=(4, 4, 4)).astype(np.float32)
    guide = np.zeros((32, 32, 3), np.float32)
    guide[::2, ::2] = 255.0  # isolated pixels of a colour far from every sample's
    out = joint_bilateral_upsample(coarse, guide, sigma_spatial=2, sigma_color=1)
    assert np.isfinite(out).all()
    lo, hi = coarse.reshape(4, -1).min(1), coarse.reshape(4, -1).max(1)
    assert (out >= lo[:, None, None]).all() and (out <= hi[:, None, None]).all()
    assert (np.abs(out).reshape(4, -1).max(1) > 0).all()


def test_a_huge_resize_is_refused_before_allocating(monkeypatch):
    """20000 x 20000 x 21 floats (34 GiB): refused at once, not after torch allocated what it could."""
    monkeypatch.setenv("SEGPOST_MAX_MEMORY_GB", "16")
    with pytest.raises(MemoryError, match="resize_logits to 20000x20000"):
        resize_logits(np.zeros((21, 4, 4), np.float32), (20000, 20000))


@pytest.mark.parametrize("call, error, fragment", [
    (lambda: joint_bilateral_upsample(LOGITS, RNG.uniform(size=(32, 32, 70)), sigma_spatial=2, sigma_color=0.1),
     ValueError, "channels"),
    (lambda: pad_to_multiple([[1, 2, 3]], 2), None, None),
    (lambda: crop_to([[1, 2, 3], [4, 5, 6]], (1, 2)), None, None),
])
def test_probe_list(call, error, fragment):
    probe(call, error, fragment)
