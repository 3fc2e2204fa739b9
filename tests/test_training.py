"""Training-time pieces of segpost.nn: the dense CRF loss, FCN's bilinear upsampling, DenseCRF's dtype rules."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import segpost
from segpost.nn import BilinearUpsample2d, DenseCRF, DenseCRFLoss


# --- the dense CRF loss -------------------------------------------------------------------------------------------

def rloss_transcription(images, probs, roi, *, weight, sigma_rgb, sigma_xy, scale_factor):
    """rloss's DenseCRFLoss (meng-tang/rloss, pytorch/.../DenseCRFLoss.py and its bilateralfilter_batch), written
    out over segpost's unnormalised lattice: (loss, rloss's gradient -2 W S / B w.r.t. the resized probabilities,
    the resized probabilities, the resized region of interest).

    As rloss: resize (images and ROI nearest, probabilities bilinear), mask the probabilities by the ROI, filter
    each image's classes one at a time with features (i / sigma_xy, j / sigma_xy, I_c / sigma_rgb) in float32,
    loss = -dot(S, W S) / N.
    """
    images = F.interpolate(images.double(), scale_factor=scale_factor)
    segs = F.interpolate(probs.double(), scale_factor=scale_factor, mode="bilinear", align_corners=False)
    rois = F.interpolate(roi[:, None].double(), scale_factor=scale_factor)[:, 0]
    n, k, h, w = segs.shape
    segs = (segs * rois[:, None]).numpy()
    sigma_xy = np.float32(sigma_xy * scale_factor)
    filtered = np.zeros(segs.shape, np.float32)
    for b in range(n):
        features = np.zeros((h * w, 2 + images.shape[1]), np.float32)
        for j in range(h):
            for i in range(w):
                index = j * w + i
                features[index, 0] = np.float32(i) / sigma_xy
                features[index, 1] = np.float32(j) / sigma_xy
                for c in range(images.shape[1]):
                    features[index, 2 + c] = np.float32(images[b, c, j, i]) / np.float32(sigma_rgb)
        lattice = segpost.PermutohedralLattice(features)
        for c in range(k):
            filtered[b, c] = lattice.filter(segs[b, c].reshape(-1).astype(np.float32)).reshape(h, w)
    loss = -np.dot(segs.reshape(-1), filtered.reshape(-1).astype(np.float64)) / n
    grad = -2 * filtered.astype(np.float64) / n * rois.numpy()[:, None]
    return weight * loss, weight * grad, segs, rois


@st.composite
def loss_inputs(draw):
    b, c, k = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(2, 4))
    h, w = draw(st.integers(2, 14)), draw(st.integers(2, 14))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=gen)
    probs = torch.softmax(3 * torch.randn(b, k, h, w, generator=gen, dtype=torch.float64), 1)
    roi = (torch.rand(b, h, w, generator=gen) > draw(st.sampled_from([0.0, 0.3]))).to(torch.float32)
    options = dict(weight=draw(st.sampled_from([1.0, 1e-3])), sigma_rgb=draw(st.sampled_from([5.0, 15.0])),
                   sigma_xy=draw(st.sampled_from([3.0, 100.0])), scale_factor=draw(st.sampled_from([1.0, 0.5])))
    return images, probs, roi, options


@given(loss_inputs())
def test_dense_crf_loss_equals_the_rloss_transcription(inputs):
    images, probs, roi, options = inputs
    if min(probs.shape[2:]) * options["scale_factor"] < 1:
        return
    expected, _, _, _ = rloss_transcription(images, probs, roi, **options)
    loss = DenseCRFLoss(**options)(images, probs, roi)
    assert loss.dtype == torch.float64 and loss.shape == ()
    assert float(loss) == pytest.approx(expected, rel=1e-5, abs=1e-9 * options["weight"])
    assert float(loss) <= 1e-9  # the negated energy of non-negative S and a non-negative kernel


@given(loss_inputs())
def test_dense_crf_loss_gradient_is_the_exact_adjoint(inputs):
    images, probs, roi, options = inputs
    if min(probs.shape[2:]) * options["scale_factor"] < 1:
        return
    options["scale_factor"] = 1.0  # the gradient with respect to the probabilities themselves
    _, _, segs, rois = rloss_transcription(images, probs, roi, **options)
    probs = probs.clone().requires_grad_()
    DenseCRFLoss(**options)(images, probs, roi).backward()
    # -(W S + W^T S) / B, masked: the lattice's exact adjoint for W^T.
    n, k, h, w = segs.shape
    exact = np.zeros(segs.shape)
    for b in range(n):
        features = segpost.nn._bilateral_features(images[b:b + 1].float(), options["sigma_rgb"],
                                                  options["sigma_xy"]).numpy()
        lattice = segpost.PermutohedralLattice(features)
        rows = segs[b].reshape(k, -1).T.astype(np.float32)
        both = lattice.filter(rows).astype(np.float64) + lattice.filter(rows, adjoint=True)
        exact[b] = (-both / n * options["weight"]).T.reshape(k, h, w) * rois[b].numpy()
    scale = np.abs(exact).max() + 1e-30
    np.testing.assert_allclose(probs.grad.numpy(), exact, atol=1e-5 * scale)


@pytest.mark.parametrize("sigma_xy, sigma_rgb", [(100.0, 15.0), (10.0, 15.0), (3.0, 5.0)])
def test_dense_crf_loss_gradient_is_close_to_rlosss_on_a_photo(sigma_xy, sigma_rgb):
    # rloss's -2 W S / B assumes a symmetric W; the lattice's W is symmetric up to its blur order: on a photo
    # the two gradients differ by 3-6% in norm (measured), on random noise by much more.
    from skimage import data

    images = torch.from_numpy(data.astronaut()[100:196, 150:246].copy()).permute(2, 0, 1)[None]
    probs = torch.softmax(3 * torch.randn(1, 4, 96, 96, generator=torch.Generator().manual_seed(0),
                                          dtype=torch.float64), 1)
    roi = torch.ones(1, 96, 96)
    options = dict(weight=1.0, sigma_rgb=sigma_rgb, sigma_xy=sigma_xy, scale_factor=1.0)
    _, rloss_grad, _, _ = rloss_transcription(images, probs, roi, **options)
    probs.requires_grad_()
    DenseCRFLoss(**options)(images, probs, roi).backward()
    assert np.linalg.norm(probs.grad.numpy() - rloss_grad) < 0.1 * np.linalg.norm(rloss_grad)


@pytest.mark.parametrize("scale_factor", [1.0, 0.5])
def test_dense_crf_loss_gradient_matches_finite_differences(scale_factor):
    # The loss is quadratic in the probabilities (the resizing and the mask are linear): central differences
    # are exact but for rounding, so a large step keeps the lattice's float32 rounding out of the way.
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 12, 14), dtype=torch.uint8, generator=gen)
    probs = torch.softmax(torch.randn(2, 3, 12, 14, dtype=torch.float64, generator=gen), 1).requires_grad_()
    roi = (torch.rand(2, 12, 14, generator=gen) > 0.2).double()
    crf_loss = DenseCRFLoss(weight=1e-3, sigma_rgb=15.0, sigma_xy=5.0, scale_factor=scale_factor)
    crf_loss(images, probs, roi).backward()
    for _ in range(5):
        direction = torch.randn(probs.shape, generator=gen, dtype=torch.float64)
        eps = 0.1
        with torch.no_grad():
            numeric = (crf_loss(images, probs + eps * direction, roi)
                       - crf_loss(images, probs - eps * direction, roi)) / (2 * eps)
        analytic = (probs.grad * direction).sum()
        assert float(numeric) == pytest.approx(float(analytic), rel=1e-4)


def test_dense_crf_loss_batch_is_the_mean_of_its_images_and_the_roi_masks():
    gen = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (3, 1, 16, 20), dtype=torch.uint8, generator=gen)  # grayscale: any channels
    probs = torch.softmax(torch.randn(3, 4, 16, 20, generator=gen), 1)
    roi = torch.ones(3, 16, 20)
    crf_loss = DenseCRFLoss(weight=1.0, sigma_xy=10.0)
    batch = crf_loss(images, probs, roi)
    one_by_one = [crf_loss(images[i:i + 1], probs[i:i + 1], roi[i:i + 1]) for i in range(3)]
    assert float(batch) == pytest.approx(float(sum(one_by_one)) / 3, rel=1e-5)
    # Outside the region nothing counts: a zero region gives zero loss and zero gradient.
    probs.requires_grad_()
    zero = crf_loss(images, probs, torch.zeros(3, 16, 20))
    zero.backward()
    assert float(zero.detach()) == 0.0 and not probs.grad.any()
    # Floats in [0, 1] are the same images as uint8 0..255.
    assert float(crf_loss(images.float() / 255, probs.detach(), roi)) == pytest.approx(float(batch), rel=1e-5)


def test_dense_crf_loss_half_precision_autocast_and_empty_batch():
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=gen)
    logits = torch.randn(2, 3, 16, 16, generator=gen)
    roi = torch.ones(2, 16, 16)
    crf_loss = DenseCRFLoss(weight=1.0, sigma_xy=10.0)
    reference = crf_loss(images, torch.softmax(logits, 1), roi)
    half = crf_loss(images, torch.softmax(logits, 1).bfloat16(), roi)
    expected = crf_loss(images, torch.softmax(logits, 1).bfloat16().float(), roi)
    assert half.dtype == torch.float32 and float(half) == float(expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert float(crf_loss(images, torch.softmax(logits, 1), roi)) == float(reference)
    empty = torch.zeros(0, 3, 16, 16, requires_grad=True)
    out = crf_loss(images[:0], empty, roi[:0])
    assert float(out.detach()) == 0.0
    out.backward()
    assert empty.grad.shape == empty.shape


@pytest.mark.parametrize("options, match", [
    (dict(weight=float("nan")), "weight"), (dict(weight=-1.0), "weight"), (dict(sigma_rgb=0.0), "sigma_rgb"),
    (dict(sigma_xy=float("inf")), "sigma_xy"), (dict(scale_factor=0.0), "scale_factor"),
])
def test_dense_crf_loss_rejects_bad_parameters(options, match):
    with pytest.raises(ValueError, match=match):
        DenseCRFLoss(**options)
    with pytest.raises(TypeError, match="sigma_xy"):
        DenseCRFLoss(sigma_xy="100")


def test_dense_crf_loss_rejects_bad_inputs():
    crf_loss = DenseCRFLoss()
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    probs = torch.full((2, 2, 8, 8), 0.5)
    roi = torch.ones(2, 8, 8)
    cases = [
        ((images, probs[0], roi), ValueError, "probs"),
        ((images, probs.long(), roi), TypeError, "probs"),
        ((images[:1], probs, roi), ValueError, "images"),
        ((images, probs, roi[:, :4]), ValueError, "roi"),
        ((images, torch.full_like(probs, float("nan")), roi), ValueError, "probs must be finite"),
        ((images, probs.index_put((torch.tensor(1),), torch.tensor(float("inf"))), roi), ValueError, "probs"),
        ((images, probs, torch.full_like(roi, float("inf"))), ValueError, "roi must be finite"),
        ((images, probs, roi.index_put((torch.tensor(0),), torch.tensor(float("nan")))), ValueError, "roi"),
        ((images, probs, roi.to(torch.complex64)), TypeError, "roi"),
        ((images.float() + 200, probs, roi), ValueError, "images"),  # 0..255 floats: the intensity rule
        ((images.numpy(), probs, roi), TypeError, "images"),
        ((images[..., :1, :1], probs[..., :1, :1], roi[..., :1, :1]), ValueError, "scale_factor"),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            crf_loss(*args)


# --- FCN's bilinear upsampling ------------------------------------------------------------------------------------

def upsample_filt(size):
    """fcn.berkeleyvision.org surgery.upsample_filt, transcribed."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


@given(st.integers(1, 4), st.integers(1, 9))
def test_bilinear_upsample_weight_is_fcns_upsample_filt_on_the_diagonal(channels, factor):
    up = BilinearUpsample2d(channels, factor)
    weight = up.weight.detach().double().numpy()
    k = 2 * factor - factor % 2
    assert weight.shape == (channels, channels, k, k)
    for i in range(channels):
        for j in range(channels):
            expected = upsample_filt(k) if i == j else np.zeros((k, k))
            np.testing.assert_allclose(weight[i, j], expected, atol=1e-7)


@given(st.integers(1, 8), st.integers(1, 9), st.integers(1, 9), st.booleans())
def test_bilinear_upsample_equals_bilinear_interpolation_inside(factor, h, w, learnable):
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    up = BilinearUpsample2d(3, factor, learnable=learnable).double()
    out = up(x)
    assert out.shape == (2, 3, factor * h, factor * w)
    expected = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    inside = (..., slice(factor, factor * h - factor), slice(factor, factor * w - factor))
    torch.testing.assert_close(out[inside], expected[inside], atol=1e-6, rtol=0)


def test_bilinear_upsample_learnable_or_fixed_and_bad_input():
    learnable, fixed = BilinearUpsample2d(2, 4), BilinearUpsample2d(2, 4, learnable=False)
    assert [name for name, _ in learnable.named_parameters()] == ["weight"]
    assert list(fixed.parameters()) == [] and "weight" in dict(fixed.named_buffers())
    x = torch.randn(1, 2, 3, 3, requires_grad=True)
    learnable(x).sum().backward()
    assert learnable.weight.grad is not None and x.grad is not None
    assert torch.equal(learnable(x), fixed(x))
    with pytest.raises(ValueError, match="x must be"):
        learnable(torch.zeros(1, 3, 4, 4))
    for bad, error in ((0, ValueError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(error, match="factor"):
            BilinearUpsample2d(2, bad)
        with pytest.raises(error, match="channels"):
            BilinearUpsample2d(bad, 2)


# --- nn.DenseCRF: dtypes, autocast, non-finite logits, empty batches, parameter checks --------------------------

def _crf_inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 10, 12, generator=gen), torch.rand(2, 3, 10, 12, generator=gen)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dense_crf_half_logits_are_computed_in_float32(dtype):
    crf = DenseCRF(3, iterations=3)
    logits, images = _crf_inputs()
    half = logits.to(dtype)
    out = crf(half, images)
    assert out.dtype == dtype
    assert torch.equal(out, crf(half.float(), images).to(dtype))


def test_dense_crf_under_autocast_is_the_float32_result():
    crf = DenseCRF(3, iterations=3)
    logits, images = _crf_inputs(1)
    expected = crf(logits, images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = crf(logits, images)
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    out.sum().backward()
    assert torch.isfinite(crf.kernel_weights.grad).all() and torch.isfinite(crf.compatibility.grad).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_dense_crf_non_finite_logits_raise_before_touching_the_gradients(bad):
    crf = DenseCRF(3, iterations=2)
    logits, images = _crf_inputs(2)
    logits[1, 2, 3, 4] = bad
    with pytest.raises(ValueError, match="logits must be finite"):
        crf(logits, images)
    assert crf.kernel_weights.grad is None


def test_dense_crf_empty_batch_returns_an_empty_output():
    crf = DenseCRF(3, iterations=2)
    logits = torch.zeros(0, 3, 10, 12, requires_grad=True)
    out = crf(logits, torch.zeros(0, 3, 10, 12))
    assert out.shape == (0, 3, 10, 12)
    out.sum().backward()
    assert logits.grad.shape == logits.shape


@pytest.mark.parametrize("name", ["pos_xy", "bi_xy", "bi_rgb", "pos_weight", "bi_weight"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), -1.0])
def test_dense_crf_rejects_non_finite_and_negative_kernel_parameters(name, value):
    with pytest.raises(ValueError, match=name):
        DenseCRF(2, **{name: value})


@pytest.mark.parametrize("name", ["pos_xy", "bi_xy", "bi_rgb"])
def test_dense_crf_rejects_zero_bandwidths_and_non_numbers(name):
    with pytest.raises(ValueError, match=name):
        DenseCRF(2, **{name: 0.0})
    with pytest.raises(TypeError, match=name):
        DenseCRF(2, **{name: "3"})


def test_dense_crf_zero_kernel_weight_is_allowed():
    crf = DenseCRF(3, iterations=2, pos_weight=0.0, bi_weight=0.0)
    logits, images = _crf_inputs(3)
    torch.testing.assert_close(crf(logits, images), logits)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_dense_crf_loss_on_cuda_equals_the_cpu():
    gen = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (3, 3, 32, 40), dtype=torch.uint8, generator=gen)
    logits = torch.randn(3, 4, 32, 40, generator=gen)
    roi = (torch.rand(3, 32, 40, generator=gen) > 0.1).float()
    crf_loss = DenseCRFLoss(weight=1.0, sigma_xy=10.0)
    results = []
    for device in ("cpu", "cuda"):
        x = logits.to(device).requires_grad_()
        loss = crf_loss(images.to(device), torch.softmax(x, 1), roi.to(device))
        loss.backward()
        results.append((float(loss), x.grad.cpu()))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-4)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-3, atol=1e-4 * results[0][1].abs().max())
