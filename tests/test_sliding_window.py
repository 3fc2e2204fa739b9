"""Sliding-window inference against MONAI's sliding_window_inference, number for number; flip TTA over volumes."""
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import need
from segpost import predict_volume, sliding_window_inference


def _model(in_channels, classes, ndim, seed=0):
    torch.manual_seed(seed)
    conv = torch.nn.Conv3d if ndim == 3 else torch.nn.Conv2d
    return torch.nn.Sequential(conv(in_channels, 4, 3, padding=1), torch.nn.ReLU(),
                               conv(4, classes, 3, padding=1)).eval()


def _monai(x, model, roi, **options):
    inferers = need("monai.inferers")
    with torch.no_grad():
        out = inferers.sliding_window_inference(x, roi, options.pop("sw_batch_size", 1), model, **options)
    return out.as_tensor() if hasattr(out, "as_tensor") else out


@settings(max_examples=30)
@given(ndim=st.sampled_from([2, 3]), batch=st.integers(1, 2), data=st.data(),
       mode=st.sampled_from(["constant", "gaussian"]), sw_batch_size=st.integers(1, 4), cval=st.sampled_from([0.0, 0.5]))
def test_equals_monai(ndim, batch, data, mode, sw_batch_size, cval):
    # Sides around and below the window (padding), overlaps 0 to 0.75, per-axis or scalar options.
    sides = data.draw(st.tuples(*[st.integers(3, 24)] * ndim))
    roi = data.draw(st.one_of(st.integers(3, 12), st.tuples(*[st.integers(3, 16)] * ndim)))
    overlap = data.draw(st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.75]),
                                  st.tuples(*[st.floats(0, 0.75)] * ndim)))
    sigma_scale = data.draw(st.one_of(st.sampled_from([0.125, 0.25]), st.tuples(*[st.floats(0.05, 1.0)] * ndim)))
    x = torch.from_numpy(np.random.default_rng(sum(sides)).normal(size=(batch, 2, *sides)).astype(np.float32))
    model = _model(2, 3, ndim)
    options = dict(overlap=overlap, mode=mode, sigma_scale=sigma_scale, cval=cval, sw_batch_size=sw_batch_size)
    expected = _monai(x, model, roi, **options)
    out = sliding_window_inference(x, model, roi_size=roi, **options)
    assert out.shape == (batch, 3, *sides) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # numpy in, numpy out, same numbers
    out_np = sliding_window_inference(x.numpy(), model, roi_size=roi, **options)
    assert isinstance(out_np, np.ndarray)
    np.testing.assert_array_equal(out_np, expected.numpy())


@pytest.mark.parametrize("padding_mode", ["replicate", "reflect", "circular"])
def test_other_padding_modes_equal_monai_on_the_padded_input(padding_mode):
    # MONAI 1.6 passes value= to every torch padding mode, which torch refuses for these: compare with MONAI
    # on the input padded as MONAI pads it (both sides, the extra voxel after), then cropped back.
    x = torch.from_numpy(np.random.default_rng(5).normal(size=(1, 2, 5, 14, 9)).astype(np.float32))
    model = _model(2, 3, 3)
    roi = (8, 6, 12)
    padded = torch.nn.functional.pad(x, (1, 2, 0, 0, 1, 2), mode=padding_mode)
    expected = _monai(padded, model, roi, overlap=0.5, mode="gaussian")[:, :, 1:6, :, 1:10]
    out = sliding_window_inference(x, model, roi_size=roi, overlap=0.5, mode="gaussian", padding_mode=padding_mode)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_equals_monai_on_a_ct_sized_volume():
    # The settings medical users run: 96^3 windows, overlap 0.5, Gaussian blending, 4 windows per pass.
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 1, 40, 120, 110)).astype(np.float32))
    model = _model(1, 3, 3)
    options = dict(overlap=0.5, mode="gaussian", sigma_scale=0.125, sw_batch_size=4)
    torch.testing.assert_close(sliding_window_inference(x, model, roi_size=(32, 96, 96), **options),
                               _monai(x, model, (32, 96, 96), **options), rtol=0, atol=0)


def test_one_channel_models_and_coarse_outputs():
    x = torch.randn(1, 1, 12, 12, 12)
    out = sliding_window_inference(x, lambda t: t[:, :1] * 2, roi_size=8)
    assert out.shape == (1, 2, 12, 12, 12)  # a sigmoid model's z is [0, z]
    torch.testing.assert_close(out[0, 1], 2 * x[0, 0])
    assert bool((out[0, 0] == 0).all())
    # outputs at half the window's resolution are resized to the window (trilinear, half-pixel)
    coarse = sliding_window_inference(x, lambda t: torch.nn.functional.avg_pool3d(t, 2).repeat(1, 3, 1, 1, 1),
                                      roi_size=8, overlap=0.5)
    assert coarse.shape == (1, 3, 12, 12, 12) and bool(torch.isfinite(coarse).all())
    # dict outputs (torchvision-style) are read
    assert sliding_window_inference(x, lambda t: {"out": t.repeat(1, 2, 1, 1, 1)}, roi_size=8).shape[1] == 2


def _brute_force_tta(volume, model, roi, axes, merge, **options):
    """Every flip combination through MONAI, flipped back, merged as probabilities or logits."""
    views = [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]
    x = torch.from_numpy(volume)[None, None]
    parts = []
    for combo in views:
        dims = [2 + a for a in combo]
        view = x.flip(dims) if dims else x
        logits = _monai(view, model, roi, **options)
        logits = logits.flip(dims) if dims else logits
        parts.append(logits[0] if merge == "logits" else torch.softmax(logits[0], 0))
    merged = sum(parts) / len(parts)
    return torch.softmax(merged, 0) if merge == "logits" else merged


@pytest.mark.parametrize("axes, merge", [((), "probs"), ((0, 1, 2), "probs"), ((2,), "logits"), ((0, 2), "probs")])
def test_predict_volume_flip_tta_equals_monai_per_view(axes, merge):
    volume = np.random.default_rng(1).normal(size=(14, 20, 18)).astype(np.float32)
    model = _model(1, 3, 3, seed=2)
    out = predict_volume(model, volume, roi_size=(8, 12, 12), flip_axes=axes, merge=merge, return_probs=True)
    expected = _brute_force_tta(volume, model, (8, 12, 12), axes, merge, overlap=0.5, mode="gaussian",
                                sigma_scale=0.125)
    assert out.probs.shape == (3, 14, 20, 18) and out.labels.shape == (14, 20, 18) and out.labels.dtype == np.int64
    np.testing.assert_allclose(out.probs, expected.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out.labels, out.probs.argmax(0))


def test_predict_volume_flip_tta_is_equivariant():
    # A model that is itself flip-equivariant (a symmetric kernel) gives the same labels with and without TTA,
    # and a flipped volume gives flipped labels.
    model = torch.nn.Conv3d(1, 2, 3, padding=1, bias=False).eval()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([1.0, -1.0])[:, None, None, None, None] * torch.ones(1, 3, 3, 3))
    volume = np.random.default_rng(3).normal(size=(10, 16, 16)).astype(np.float32)
    plain = predict_volume(model, volume, roi_size=8, return_probs=True)
    tta = predict_volume(model, volume, roi_size=8, flip_axes=(0, 1, 2), return_probs=True)
    np.testing.assert_allclose(tta.probs, plain.probs, atol=1e-5)
    flipped = predict_volume(model, volume[::-1, :, ::-1].copy(), roi_size=8)
    np.testing.assert_array_equal(flipped.labels, plain.labels[::-1, :, ::-1])


def test_predict_volume_layouts_and_model_modes():
    model = _model(2, 3, 3)
    model.train()
    volume = np.random.default_rng(4).normal(size=(9, 12, 12, 2)).astype(np.float32)   # numpy (D, H, W, M)
    a = predict_volume(model, volume, roi_size=8, return_probs=True)
    b = predict_volume(model, torch.from_numpy(np.moveaxis(volume, -1, 0).copy()), roi_size=8, return_probs=True)
    c = predict_volume(model, np.moveaxis(volume, -1, 0), roi_size=8, channel_axis=0, return_probs=True)
    np.testing.assert_array_equal(a.probs, b.probs)
    np.testing.assert_array_equal(a.probs, c.probs)
    assert model.training  # put back in its own mode
    np.testing.assert_allclose(a.probs.sum(0), 1, rtol=1e-5)


@pytest.mark.parametrize("call, error, match", [
    (lambda: sliding_window_inference(torch.zeros(2, 8, 8), lambda t: t, roi_size=4), ValueError, "B, M, H, W"),
    (lambda: sliding_window_inference(torch.zeros(1, 1, 8, 8, 8), lambda t: t, roi_size=(4, 4)), ValueError,
     "roi_size"),
    (lambda: sliding_window_inference(torch.zeros(1, 1, 8, 8, 8), lambda t: t, roi_size=4, overlap=1.0),
     ValueError, "overlap"),
    (lambda: sliding_window_inference(torch.zeros(1, 1, 8, 8, 8), lambda t: t, roi_size=4, mode="mean"),
     ValueError, "mode"),
    (lambda: sliding_window_inference(torch.zeros(1, 1, 8, 8, 8), lambda t: t, roi_size=4, sigma_scale=0),
     ValueError, "sigma_scale"),
    (lambda: sliding_window_inference(torch.zeros(1, 1, 8, 8, 8), lambda t: t, roi_size=4, padding_mode="edge"),
     ValueError, "padding_mode"),
    (lambda: sliding_window_inference(torch.zeros(1, 1, 8, 8, 8), lambda t: t, roi_size=4, sw_batch_size=0),
     ValueError, "sw_batch_size"),
    (lambda: sliding_window_inference(torch.full((1, 1, 8, 8, 8), float("nan")), lambda t: t, roi_size=4),
     ValueError, "finite"),
    (lambda: sliding_window_inference(torch.zeros(1, 1, 8, 8, 8), lambda t: t[:, 0], roi_size=4),
     ValueError, "model must return"),
    (lambda: sliding_window_inference(torch.zeros(1, 1, 8, 8, 8), lambda t: t / 0, roi_size=4),
     ValueError, "NaN or infinite"),
    (lambda: predict_volume(lambda t: t, np.zeros((8, 8)), roi_size=4), ValueError, "volume must be"),
    (lambda: predict_volume(lambda t: t, np.zeros((8, 8, 8)), roi_size=4, flip_axes=(3,)), ValueError, "flip_axes"),
    (lambda: predict_volume(lambda t: t, np.zeros((8, 8, 8)), roi_size=4, flip_axes=(1, -2)), ValueError, "twice"),
    (lambda: predict_volume(lambda t: t, np.zeros((8, 8, 8)), roi_size=4, merge="mean"), ValueError, "merge"),
    (lambda: predict_volume("model", np.zeros((8, 8, 8)), roi_size=4), TypeError, "model"),
    # A volume without its batch (and channel) axes: said so, not torch's Conv3d error or the 2-D wording.
    (lambda: sliding_window_inference(torch.zeros(8, 8, 8), lambda t: t, roi_size=(4, 4, 4)), ValueError,
     r"inputs\[None, None\]"),
    (lambda: sliding_window_inference(torch.zeros(1, 8, 8, 8), lambda t: t, roi_size=(4, 4, 4)), ValueError,
     r"3-long roi_size needs \(B, M, D, H, W\).*inputs\[None\]"),
    (lambda: predict_volume(lambda t: t, np.zeros((1, 8, 32, 32)), roi_size=4), ValueError,
     r"32 modalities: a \(M, D, H, W\) array\? pass channel_axis=0"),
    (lambda: predict_volume(lambda t: t, np.full((8, 8, 8), np.nan), roi_size=4), ValueError, "volume must be finite"),
    (lambda: predict_volume(lambda t: t, np.zeros((1, 1, 8, 8, 8)), roi_size=4), ValueError,
     r"a batch of one\? pass volume\[0\]"),
    (lambda: sliding_window_inference(torch.zeros(1, 1, 4, 4, 4), lambda t: t, roi_size=8, padding_mode="reflect",
                                      cval=1.0), ValueError, "cval is the value of constant padding"),
])
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()
