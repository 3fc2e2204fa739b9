"""Resizing (C, d, h, w) volumes: trilinear against torch.nn.functional.interpolate, nearest-exact labels,
blockwise argmax, and the one ambiguous call refused."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from segpost import resize_labels, resize_logits, upsample_argmax

LENGTHS = st.integers(1, 9)
OUT_LENGTHS = st.integers(1, 23)


def _trilinear(x, size, align_corners):
    return F.interpolate(torch.from_numpy(x)[None], size=size, mode="trilinear", align_corners=align_corners)[0]


@given(c=st.integers(1, 4), shape=st.tuples(LENGTHS, LENGTHS, LENGTHS), size=st.tuples(OUT_LENGTHS, OUT_LENGTHS, OUT_LENGTHS),
       align_corners=st.booleans(), seed=st.integers(0, 2**16))
def test_resize_logits_volume_equals_torch_trilinear(c, shape, size, align_corners, seed):
    x = np.random.default_rng(seed).normal(size=(c, *shape)).astype(np.float32)
    expected = _trilinear(x, size, align_corners)
    out = resize_logits(x, size, align_corners=align_corners)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (c, *size)
    np.testing.assert_array_equal(out, expected.numpy())
    out_t = resize_logits(torch.from_numpy(x), size, align_corners=align_corners)
    assert isinstance(out_t, torch.Tensor) and torch.equal(out_t, expected)
    batch = np.stack([x, -x])
    out_b = resize_logits(batch, size, align_corners=align_corners, batch=True)
    np.testing.assert_array_equal(out_b[1], -expected.numpy())


@pytest.mark.parametrize("align_corners", [False, True])
def test_volume_conventions_are_the_2d_ones_along_depth(align_corners):
    # A volume constant in-plane resizes along depth exactly as a (1, d, 1) image resizes along its rows.
    profile = np.array([0.0, 1.0, 5.0, 2.0], np.float32)
    volume = np.broadcast_to(profile[None, :, None, None], (1, 4, 3, 3)).copy()
    out = resize_logits(volume, (9, 3, 3), align_corners=align_corners)
    rows = resize_logits(profile[None, :, None], (9, 1), align_corners=align_corners)[0, :, 0]
    np.testing.assert_array_equal(out[0, :, 1, 1], rows)
    if align_corners:  # the corners are kept
        assert out[0, 0, 0, 0] == 0.0 and out[0, -1, 0, 0] == 2.0


@pytest.mark.parametrize("align_corners", [False, True])
def test_resize_logits_volume_keeps_autograd_gradcheck(align_corners):
    x = torch.randn(2, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    out = resize_logits(x, (4, 3, 5), align_corners=align_corners)
    assert out.requires_grad and out.dtype == torch.float64
    assert torch.autograd.gradcheck(lambda t: resize_logits(t, (4, 3, 5), align_corners=align_corners), (x,))
    y = torch.randn(1, 2, 3, 2, 2, requires_grad=True)
    resize_logits(y, (3, 4, 4), align_corners=align_corners, batch=True).sum().backward()
    assert y.grad is not None and y.grad.shape == y.shape


@given(shape=st.tuples(LENGTHS, LENGTHS, LENGTHS), size=st.tuples(OUT_LENGTHS, OUT_LENGTHS, OUT_LENGTHS),
       dtype=st.sampled_from([np.uint8, np.int32, np.int64]), seed=st.integers(0, 2**16))
def test_resize_labels_volume_equals_torch_nearest_exact(shape, size, dtype, seed):
    labels = np.random.default_rng(seed).integers(0, 255, size=shape).astype(dtype)
    expected = F.interpolate(torch.from_numpy(labels.astype(np.float32))[None, None], size=size,
                             mode="nearest-exact")[0, 0].numpy().astype(dtype)
    out = resize_labels(labels, size)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(resize_labels(torch.from_numpy(labels.astype(np.int64)), size).numpy(), expected)
    # leading axes are kept: a batch of two volumes
    np.testing.assert_array_equal(resize_labels(np.stack([labels, labels]), size)[1], expected)


@given(c=st.integers(1, 5), shape=st.tuples(LENGTHS, LENGTHS, LENGTHS), size=st.tuples(OUT_LENGTHS, OUT_LENGTHS, OUT_LENGTHS),
       align_corners=st.booleans(), block=st.integers(1, 30), seed=st.integers(0, 2**16))
def test_upsample_argmax_volume_equals_full_resolution_argmax(c, shape, size, align_corners, block, seed):
    logits = np.random.default_rng(seed).normal(size=(c, *shape)).astype(np.float32)
    full = resize_logits(logits, size, align_corners=align_corners).argmax(0)
    out = upsample_argmax(logits, size, align_corners=align_corners, block_rows=block)
    assert out.dtype == np.int64 and out.shape == size
    np.testing.assert_array_equal(out, full)
    out_t = upsample_argmax(torch.from_numpy(logits), size, align_corners=align_corners, block_rows=block)
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_array_equal(out_t.numpy(), full)


def test_2d_numbers_unchanged():
    # The 2-D path is still torch's bilinear, number for number.
    x = np.random.default_rng(3).normal(size=(3, 7, 5)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(x)[None], size=(13, 11), mode="bilinear")[0].numpy()
    np.testing.assert_array_equal(resize_logits(x, (13, 11)), expected)


@pytest.mark.parametrize(
    "call, match",
    [
        # a 2-long size on 4-D scores: a batch of images or a volume? refused, naming both fixes
        (lambda: resize_logits(np.zeros((2, 3, 4, 5), np.float32), (8, 8)), "ambiguous.*batch=True.*3-long size"),
        (lambda: resize_logits(torch.zeros(2, 3, 4, 5), (8, 8)), "ambiguous"),
        (lambda: upsample_argmax(np.zeros((2, 3, 4, 5), np.float32), (8, 8)), "ambiguous.*3-long size"),
        (lambda: resize_logits(np.zeros((3, 4, 5), np.float32), (8, 8, 8)), r"\(C, d, h, w\)"),
        (lambda: resize_logits(np.zeros((2, 3, 4, 5, 6), np.float32), (8, 8, 8)), "batch=True"),
        (lambda: resize_logits(np.zeros((3, 4, 5), np.float32), (8, 8), batch=True), "with batch=True"),
        (lambda: resize_logits(np.zeros((2, 0, 4, 5), np.float32), (8, 8, 8)), "non-empty"),
        (lambda: resize_logits(np.zeros((2, 3, 4, 5), np.float32), (8, 8, 8, 8)), "size"),
        (lambda: resize_logits(np.zeros((2, 3, 4, 5), np.float32), (8, 0, 8)), "size"),
        (lambda: resize_logits(np.full((2, 3, 4, 5), np.nan, np.float32), (8, 8, 8)), "finite"),
        (lambda: upsample_argmax(np.zeros((2, 3, 4, 5), np.float32), (8, 8, 8), block_rows=0), "block_rows"),
        (lambda: resize_labels(np.zeros((3, 3), np.uint8), (4, 4, 4)), r"\(\.\.\., d, h, w\)"),
        (lambda: resize_labels(np.zeros((2, 3, 3), np.float32), (4, 4, 4)), "never resize labels bilinearly"),
    ],
)
def test_bad_volume_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_volume_memory_is_estimated_before_allocating():
    with pytest.raises(MemoryError, match="resize_logits to 2000x2000x2000"):
        resize_logits(np.zeros((3, 4, 4, 4), np.float32), (2000, 2000, 2000))
