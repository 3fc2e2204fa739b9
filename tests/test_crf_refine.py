"""crf_refine and CRFParams: the one-call API."""
import warnings

import numpy as np
import pytest
from skimage import data

from segpost import CRFParams, crf_refine

from oracles import linux_only, run_python, probe


def _scene():
    """Two photos' textures laid into a known label map, and coarse noisy logits of it."""
    left, right = data.astronaut()[:128, :128], data.coffee()[:128, 200:328]
    truth = np.zeros((128, 128), np.int64)
    truth[:, 64:] = 1
    truth[40:90, 20:50] = 2
    image = np.where(truth[..., None] == 1, right, left).astype(np.uint8)
    image[truth == 2] = (image[truth == 2] * 0.3).astype(np.uint8)
    onehot = np.stack([truth == k for k in range(3)]).astype(np.float32)
    coarse = onehot.reshape(3, 16, 8, 16, 8).mean(axis=(2, 4)) * 4  # output stride 8: blurry boundaries
    coarse += np.random.default_rng(0).normal(scale=0.5, size=coarse.shape).astype(np.float32)
    return image, truth, coarse.astype(np.float32)


def test_refinement_snaps_coarse_predictions_to_edges():
    image, truth, coarse = _scene()
    from segpost.upsample import resize_logits

    before = resize_logits(coarse, truth.shape).argmax(axis=0)
    after = crf_refine(image, coarse)
    errors_before, errors_after = (before != truth).sum(), (after != truth).sum()
    assert errors_before > 100
    assert errors_after < 0.5 * errors_before


def test_logits_and_probs_paths_agree():
    image, _, coarse = _scene()
    probs = np.exp(coarse - coarse.max(0)) / np.exp(coarse - coarse.max(0)).sum(0)
    a = crf_refine(image, coarse)
    b = crf_refine(image, probs=probs.astype(np.float32))
    assert (a == b).mean() > 0.99


def test_return_probs_and_types():
    torch = pytest.importorskip("torch")
    image, _, coarse = _scene()
    labels, probs = crf_refine(image, coarse, return_probs=True, iterations=3)
    assert labels.dtype == np.int64 and labels.shape == (128, 128)
    assert probs.dtype == np.float32 and probs.shape == (3, 128, 128)
    np.testing.assert_allclose(probs.sum(0), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probs.argmax(0), labels)
    # torch in, torch out; a (3, H, W) uint8 tensor image is the same picture.
    t_labels = crf_refine(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(coarse), iterations=3)
    assert isinstance(t_labels, torch.Tensor) and t_labels.dtype == torch.int64
    np.testing.assert_array_equal(t_labels.numpy(), labels)
    # float images in [0, 1] are the same picture as uint8
    f_labels = crf_refine(image.astype(np.float32) / 255, coarse, iterations=3)
    assert (f_labels == labels).mean() > 0.999


def test_gray_and_multichannel_images():
    image, _, coarse = _scene()
    gray = image.mean(axis=2).astype(np.uint8)
    assert crf_refine(gray, coarse).shape == gray.shape
    five = np.concatenate([image, image[..., :2]], axis=2)
    assert crf_refine(five, coarse).shape == gray.shape


def test_align_corners_and_exact_sizes():
    # DeepLab sizes: 65 -> 513 at output stride 8 with align_corners.
    image = np.pad(data.astronaut(), ((0, 1), (0, 1), (0, 0)), mode="edge")  # 513 x 513
    logits = np.random.default_rng(0).normal(size=(4, 65, 65)).astype(np.float32)
    assert crf_refine(image, logits, align_corners=True, iterations=1).shape == (513, 513)
    assert crf_refine(image[:7, :9], logits[:, :7, :9], iterations=1).shape == (7, 9)


def test_inputs_are_left_untouched():
    image, _, coarse = _scene()
    image_copy, coarse_copy = image.copy(), coarse.copy()
    crf_refine(image, coarse)
    full = np.random.default_rng(0).normal(size=(3, 128, 128)).astype(np.float32)
    full_copy = full.copy()
    crf_refine(image, full)  # same size: no resize, the scores must not be negated in place
    np.testing.assert_array_equal(image, image_copy)
    np.testing.assert_array_equal(coarse, coarse_copy)
    np.testing.assert_array_equal(full, full_copy)


def test_params_presets_and_overrides():
    assert CRFParams.deeplab() == CRFParams(3, 3, 4, 49, 5, 10)
    assert CRFParams.pydensecrf() == CRFParams(3, 3, 10, 80, 13, 5)
    assert CRFParams.coerce("pydensecrf").bi_xy == 80
    assert CRFParams.coerce({"bi_weight": 5}).bi_weight == 5
    assert CRFParams().replace(iterations=3).iterations == 3
    image, _, coarse = _scene()
    a = crf_refine(image, coarse, params=CRFParams(iterations=2))
    b = crf_refine(image, coarse, iterations=2)
    np.testing.assert_array_equal(a, b)
    # Zero weights and zero iterations reduce to the argmax of the upsampled logits.
    from segpost.upsample import resize_logits

    plain = resize_logits(coarse, (128, 128)).argmax(0)
    np.testing.assert_array_equal(crf_refine(image, coarse, iterations=0), plain)
    np.testing.assert_array_equal(crf_refine(image, coarse, params=CRFParams(pos_weight=0, bi_weight=0)), plain)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(), ValueError, "exactly one"),
        (dict(logits=np.zeros((3, 8, 8), np.float32), probs=np.zeros((3, 8, 8), np.float32)), ValueError, "exactly one"),
        (dict(logits=np.zeros((3, 8), np.float32)), ValueError, r"\(C, h, w\)"),
        (dict(logits=np.zeros((0, 8, 8), np.float32)), ValueError, "empty"),
        (dict(logits=np.full((3, 8, 8), np.nan, np.float32)), ValueError, "finite"),
        (dict(logits=np.full((3, 8, 8), np.inf, np.float32)), ValueError, "finite"),
        (dict(logits=np.zeros((3, 8, 8), np.int64)), TypeError, "floating"),
        (dict(logits=np.zeros((3, 80, 8), np.float32)), ValueError, "larger than the image"),
        (dict(logits=np.zeros((3, 32, 8), np.float32)), ValueError, "aspect ratio"),
        (dict(probs=np.full((3, 8, 8), 0.5, np.float32)), ValueError, "sum to 1"),
        (dict(probs=np.full((2, 8, 8), 0.5, np.float32) * np.array([-1, 3.0], np.float32)[:, None, None]), ValueError, "non-negative"),
        (dict(image=np.zeros((0, 64, 3), np.uint8)), ValueError, "empty"),
        (dict(image=np.zeros((64, 64, 3, 2), np.uint8)), ValueError, r"\(H, W, C\)"),
        (dict(image=np.zeros((64, 64, 40), np.uint8)), ValueError, "channels"),
        (dict(image=np.full((64, 64, 3), 200.0)), ValueError, r"\[0, 1\]"),
        (dict(image=np.zeros((64, 64, 3), np.complex64)), TypeError, "real numeric"),
        (dict(params=CRFParams(bi_xy=-1) if False else {"bi_xy": -1}), ValueError, "bi_xy"),
        (dict(params={"bi_xy": 0}), ValueError, "bi_xy"),
        (dict(params={"sxy": 3}), ValueError, "unknown"),
        (dict(params="densecrf"), ValueError, "preset"),
        (dict(params=3), TypeError, "params"),
        (dict(iterations=-1), ValueError, "iterations"),
        (dict(iterations=2.5), TypeError, "iterations"),
    ],
)
def test_bad_input_raises(kwargs, error, match):
    args = dict(image=np.zeros((64, 64, 3), np.uint8))
    if "probs" not in kwargs and "logits" not in kwargs and kwargs:
        args["logits"] = np.zeros((3, 8, 8), np.float32)
    args.update(kwargs)
    image = args.pop("image")
    logits = args.pop("logits", None)
    with pytest.raises(error, match=match):
        crf_refine(image, logits, **args)


def test_huge_images_raise_memory_error_before_allocating(monkeypatch):
    monkeypatch.setenv("SEGPOST_MAX_MEMORY_GB", "0.01")
    image = np.zeros((1024, 1024, 3), np.uint8)
    with pytest.raises(MemoryError, match="GiB"):
        crf_refine(image, np.zeros((21, 128, 128), np.float32))


# --- inputs once refused, mishandled or turned into wrong numbers -------------------------------------------

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8)
LOGITS = RNG.normal(size=(3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("call", [
    lambda: crf_refine(IMAGE, np.full((3, 8, 8), 1e39)),
    lambda: crf_refine(np.full((32, 32, 3), 1e300), LOGITS),
], ids=["logits", "image"])
def test_float64_beyond_float32_range_is_refused(call):
    with pytest.raises(ValueError, match="range|magnitude"):
        call()


def test_big_endian_float_inputs():
    expected = crf_refine(IMAGE, LOGITS)
    np.testing.assert_array_equal(crf_refine(IMAGE, LOGITS.astype(">f4")), expected)


def test_half_precision_probabilities_are_accepted():
    # A softmax under AMP: summed in float16, as the check once did, its
    # rounding exceeds the tolerance (float64 sums are within 4e-4).
    import torch

    probs = torch.softmax(torch.from_numpy(RNG.normal(scale=4, size=(150, 16, 16))).half(), dim=0)
    assert np.abs(probs.numpy().sum(0) - 1).max() > 1e-3
    labels = crf_refine(RNG.integers(0, 255, (64, 64, 3), dtype=np.uint8), probs=probs)
    assert labels.shape == (64, 64)


@pytest.mark.parametrize("size, stride", [((40, 64), 32), ((33, 65), 16), ((100, 30), 32), ((17, 513), 8)])
def test_scores_of_any_output_stride_fit(size, stride):
    height, width = size
    for h, w in {(-(-height // stride), -(-width // stride)), (max(1, height // stride), max(1, width // stride)),
                 ((height - 1) // stride + 1, (width - 1) // stride + 1)}:
        image = RNG.integers(0, 255, (height, width, 3), dtype=np.uint8)
        logits = RNG.normal(size=(3, h, w)).astype(np.float32)
        assert crf_refine(image, logits).shape == size


def test_transposed_scores_are_still_refused():
    image = RNG.integers(0, 255, (256, 64, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="transposed"):
        crf_refine(image, RNG.normal(size=(3, 8, 32)).astype(np.float32))


@pytest.mark.parametrize("call, error, fragment", [
    (lambda: crf_refine(IMAGE, LOGITS, iterations=2**40), ValueError, "iterations"),
    (lambda: crf_refine([[1, 2], [3]], LOGITS), TypeError, "image"),
    (lambda: crf_refine(IMAGE, LOGITS, params={"bi_rgb": 1e-9}), ValueError, "bi_rgb must be at least"),
    (lambda: crf_refine(IMAGE.astype(np.float32), LOGITS), ValueError,
     "image of a floating-point dtype must hold"),
])
def test_probe_list(call, error, fragment):
    probe(call, error, fragment)


@linux_only
def test_ctrl_c_interrupts_a_long_crf_and_leaves_inputs_untouched():
    result = run_python("""
        import os, signal, threading, time
        import numpy as np
        import segpost

        image = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
        logits = np.random.default_rng(1).normal(size=(5, 16, 16)).astype(np.float32)
        before = logits.copy()
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        start = time.perf_counter()
        try:
            segpost.crf_refine(image, logits, iterations=1_000_000)
        except KeyboardInterrupt:
            print(f"interrupted after {time.perf_counter() - start:.1f} s")
        assert np.array_equal(logits, before)
        # The library still works afterwards.
        assert segpost.crf_refine(image, logits).shape == (128, 128)
    """, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("interrupted"), result.stdout
    assert float(result.stdout.split()[2]) < 5


# --- inputs a user's real model hands crf_refine (each once gave a wrong answer) ----------------------------

def _photo(h=48, w=64):
    return data.astronaut()[100:100 + h, 150:150 + w]


def test_probabilities_given_as_logits_are_refused_naming_probs():
    rng = np.random.default_rng(0)
    scores = rng.random((3, 8, 8)).astype(np.float32)
    probs = scores / scores.sum(0)
    with pytest.raises(ValueError, match="softmax probabilities; pass them as probs="):
        crf_refine(_photo(32, 32), probs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crf_refine(_photo(32, 32), np.log(probs))  # real logits: no warning
        crf_refine(_photo(32, 32), probs=probs)


def test_an_rgba_image_warns_naming_the_fix():
    rgba = np.dstack([_photo(32, 32), np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))])
    logits = np.random.default_rng(0).normal(size=(3, 8, 8)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"RGBA picture\? .* pass image\[\.\.\., :3\]"):
        crf_refine(rgba, logits)
    rgba[..., 3] = 255  # a constant alpha separates no two pixels: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crf_refine(rgba, logits)


def test_scores_that_fit_in_two_layouts_warn():
    """(h, w, C) logits with C equal to h on a square image read as (C, h, w): said, with the fix."""
    logits = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    with pytest.warns(UserWarning, match="np.moveaxis"):
        crf_refine(_photo(128, 128), logits, iterations=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crf_refine(_photo(128, 128), logits[:5], iterations=1)  # (5, 16, 16): one reading only
        # (65, 64, 64) on 512x512: 65 classes at stride 8; as (h, w, C) a 65x64 grid fits only within a
        # cell of rounding, and divides the image on one axis only: the less likely reading, not warned.
        crf_refine(np.zeros((512, 512, 3), np.uint8), np.zeros((65, 64, 64), np.float32), iterations=0)
    with pytest.warns(UserWarning, match="np.moveaxis"):  # 64 classes at 64x64: either reading
        crf_refine(np.zeros((512, 512, 3), np.uint8), np.zeros((64, 64, 64), np.float32), iterations=0)


@pytest.mark.parametrize("shape, size, warned", [
    ((64, 64), (500, 512), True),     # a 512x512 input's logits stretched over the 500x512 image (12 px off)
    ((63, 64), (500, 512), False),    # cropped to the image's part: one cell of rounding
    ((65, 65), (513, 513), False),    # DeepLab's (n - 1) * 8 + 1
    ((60, 64), (480, 512), False),
])
def test_scores_scaled_unevenly_warn_naming_the_crop(shape, size, warned):
    logits = np.random.default_rng(0).normal(size=(3, *shape)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        crf_refine(np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8), logits, iterations=1)
    messages = [str(w.message) for w in caught]
    assert any("crop the logits" in m for m in messages) == warned, messages


def test_bfloat16_logits_are_converted():
    torch = pytest.importorskip("torch")
    logits = torch.randn(3, 12, 16, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    got = crf_refine(_photo(), logits)
    assert torch.equal(got, crf_refine(_photo(), logits.float()))
