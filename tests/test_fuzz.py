"""Every public entry point fuzzed with adversarial arrays.

A call either raises a clean Python exception (ValueError, TypeError,
MemoryError) or returns a finite result of the right shape within its valid
range (marginals sum to 1, averages stay within their inputs' range, labels
are labels), and it never changes its inputs. Arrays come NaN/inf-laden,
0-size, 1x1, non-contiguous, reversed, float16/32/64, big-endian, integer,
boolean, as lists or as object arrays, with tiny and huge bandwidths and 1 to
1000 labels.

CI runs FUZZ_EXAMPLES examples per entry point (a few seconds each);
``pytest --fuzz-long`` runs 50x more.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import segpost
import segpost.compat.pydensecrf.densecrf as dcrf

FUZZ_EXAMPLES = 5000 if os.environ.get("SEGPOST_FUZZ_LONG") else 100
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CLEAN_ERRORS = (ValueError, TypeError, MemoryError)

SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, 255.0, 1e-45, 1e-30, 1e30, -1e30, 3e38, 1e300, np.nan, np.inf, -np.inf]
FLOAT_DTYPES = ["float16", "float32", "float64", ">f4", ">f8"]
ANY_DTYPES = FLOAT_DTYPES + ["uint8", "int32", ">i2", "int64", "bool"]


def mostly(good, bad=()):
    """Values from `good` two times in three, else from good and bad: most calls get past validation."""
    return st.one_of(st.sampled_from(list(good)), st.sampled_from(list(good)), st.sampled_from(list(good) + list(bad)))


BANDWIDTHS = mostly([1e-3, 0.5, 3.0, 80.0, 1e6], [1e-50, 1e-8, 1e30, 0.0, -1.0, np.nan, np.inf])
SIDES = mostly(range(1, 9), [0])
LABEL_COUNTS = mostly([2, 3, 5, 9, 21, 40], [0, 1, 70, 1000])


@st.composite
def adversarial(draw, shape, dtypes=FLOAT_DTYPES, special=True):
    """An array of `shape` (a tuple, or a strategy for one) in any dtype and memory layout, or a list of it."""
    shape = draw(shape) if isinstance(shape, st.SearchStrategy) else shape
    elements = st.floats(-4, 4)
    if special and draw(st.integers(0, 2)) == 0:  # a third of the arrays hold special values
        elements = st.one_of(elements, elements, elements, st.sampled_from(SPECIAL))
    values = draw(hnp.arrays(np.float64, shape, elements=elements))
    dtype = np.dtype(draw(mostly(dtypes[:2], dtypes[2:])))
    with np.errstate(all="ignore"):
        if dtype.kind in "iub":
            values = np.nan_to_num(values, nan=0, posinf=255, neginf=0)
            values = np.clip(values, 0, 255) if dtype.kind in "ub" else np.clip(values, -1000, 1000)
            values = np.rint(values) if dtype.kind != "b" else values > 0.5
        arr = values.astype(dtype)
    layout = draw(st.sampled_from(["c", "c", "c", "f", "strided", "reversed", "list", "object"]))
    if layout == "f":
        arr = np.asfortranarray(arr)
    elif layout == "strided" and arr.ndim:
        wide = np.repeat(arr, 2, axis=-1)
        arr = wide[..., ::2]
    elif layout == "reversed" and arr.ndim:
        arr = arr[..., ::-1]
    elif layout == "list":
        return arr.tolist()
    elif layout == "object":
        return arr.astype(object)
    return arr


def shapes(min_dims, max_dims, min_side=0, max_side=6):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def _snapshot(*inputs):
    return [np.array(x, copy=True) if isinstance(x, np.ndarray) and x.dtype != object else None for x in inputs]


def _unchanged(inputs, snapshots):
    for x, before in zip(inputs, snapshots):
        if before is not None:
            np.testing.assert_array_equal(x, before, err_msg="an input was modified")


def _float_range(x):
    a = np.asarray(x, np.float64)
    return float(a.min()), float(a.max())


def _call(fn, *inputs):
    """fn() on inputs, checking they are left untouched; None when it raised a clean error."""
    snapshots = _snapshot(*inputs)
    try:
        result = fn()
        event("returned a result")
    except CLEAN_ERRORS as exc:
        event(f"raised {type(exc).__name__}: {str(exc)[:50]}")
        result = None
    _unchanged(inputs, snapshots)
    return result


def _assert_marginals(q, shape):
    q = np.asarray(q)
    assert q.shape == shape and np.isfinite(q).all()
    assert (q >= 0).all()
    np.testing.assert_allclose(q.sum(axis=0), 1, atol=1e-4)


@FUZZ
@given(features=adversarial(st.tuples(st.integers(0, 40), st.integers(0, 6))),
       channels=st.integers(0, 4), data=st.data())
def test_lattice_filter(features, channels, data):
    n = np.shape(features)[0]
    values = data.draw(adversarial((n, channels)))
    normalize = data.draw(st.booleans())
    out = _call(lambda: segpost.PermutohedralLattice(features).filter(values, normalize=normalize), features, values)
    if out is None:
        return
    assert out.shape == (n, channels) and np.isfinite(out).all()
    if normalize and n:  # a normalised filter averages its input
        lo, hi = _float_range(values)
        span = 1e-4 * max(1.0, abs(lo), abs(hi))
        assert out.min() >= lo - span and out.max() <= hi + span


@FUZZ
@given(offset=st.floats(1e14, 1e19), spread=st.sampled_from([0.0, 1e-3, 1.0, 50.0]), n=st.integers(1, 40),
       d=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_lattice_far_from_the_origin_works_or_refuses_cleanly(offset, spread, n, d, seed):
    """Features far off the origin (where a whole number of lattice periods no longer rounds exactly) build a
    lattice whose normalised filter averages, or get a ValueError: never the lattice's internal error."""
    features = offset + spread * np.random.default_rng(seed).normal(size=(n, d))
    values = np.random.default_rng(seed + 1).uniform(-1, 1, size=(n, 2)).astype(np.float32)
    try:
        out = segpost.PermutohedralLattice(features).filter(values, normalize=True)
    except ValueError:
        return
    assert np.isfinite(out).all() and out.min() >= values.min() - 1e-4 and out.max() <= values.max() + 1e-4


@pytest.mark.parametrize("call", [
    lambda image: segpost.bilateral_filter(image, 52.0, 12.95),
    lambda image: segpost.joint_bilateral_upsample(np.zeros((2, 4, 4), np.float32), image, sigma_spatial=2.0,
                                                   sigma_color=12.95),
])
def test_constant_image_at_a_huge_offset(call):
    """A constant image at 9.2e17 (the issue's repro): zero colour span, features at 7e16 bandwidths."""
    out = np.asarray(call(np.full((16, 7, 3), 9.2e17, np.float32)))
    assert np.isfinite(out).all()


@FUZZ
@given(image=adversarial(shapes(2, 3, max_side=8), ANY_DTYPES), sigma_spatial=BANDWIDTHS,
       sigma_color=BANDWIDTHS)
def test_bilateral_filter(image, sigma_spatial, sigma_color):
    out = _call(lambda: segpost.bilateral_filter(image, sigma_spatial=sigma_spatial, sigma_color=sigma_color), image)
    if out is None:
        return
    assert out.shape == np.shape(image) and np.isfinite(out).all()
    lo, hi = _float_range(image)
    span = 1e-3 * max(1.0, abs(lo), abs(hi))
    assert out.min() >= lo - span and out.max() <= hi + span


@FUZZ
@given(h=SIDES, w=SIDES, channels=mostly([3, 1], [20]), labels=LABEL_COUNTS, data=st.data())
def test_crf_refine(h, w, channels, labels, data):
    image = data.draw(adversarial((2 * h, 2 * w, channels), ["uint8", "float32", "float64", "int64", ">f4", "bool"]))
    h, w = 2 * h, 2 * w
    logits = data.draw(adversarial((labels, max(1, h // 4), max(1, w // 4))))
    iterations = data.draw(mostly([1, 3, 0], [-1, 2**40]))
    out = _call(lambda: segpost.crf_refine(image, logits, iterations=iterations, return_probs=True), image, logits)
    if out is None:
        return
    labels_out, q = out
    classes = max(labels, 2)  # one channel is a sigmoid model's: two classes
    assert labels_out.shape == (h, w) and (labels_out >= 0).all() and (labels_out < classes).all()
    _assert_marginals(q, (classes, h, w))


@FUZZ
@given(labels=LABEL_COUNTS, h=SIDES, w=SIDES, sigma=BANDWIDTHS, compat=mostly([3.0, -5.0, 0.0], [1e10, 1e20, np.nan]),
       data=st.data())
def test_dense_crf(labels, h, w, sigma, compat, data):
    shape = (labels, h, w)
    unary = data.draw(adversarial(shape))
    image = data.draw(adversarial((h, w, 3), ANY_DTYPES))

    def run():
        crf = segpost.DenseCRF(unary)
        crf.add_gaussian(sigma, compat=compat)
        crf.add_bilateral(image, sigma, data.draw(BANDWIDTHS), compat=compat)
        return crf.inference(data.draw(st.sampled_from([0, 2, 5])))

    q = _call(run, unary, image)
    if q is not None:
        _assert_marginals(q, shape)


@FUZZ
@given(labels=LABEL_COUNTS, h=SIDES, w=SIDES, data=st.data())
def test_pydensecrf_drop_in(labels, h, w, data):
    # pydensecrf's own contract: float32 C-contiguous unaries and uint8 images (anything else refused).
    unary = data.draw(adversarial((labels, h * w), ["float32", "float32", "float64", "float16"]))
    image = data.draw(adversarial((h, w, 3), ["uint8", "uint8", "float32"], special=False))

    def run():
        d = dcrf.DenseCRF2D(w, h, labels)
        d.setUnaryEnergy(unary)
        d.addPairwiseGaussian(sxy=data.draw(BANDWIDTHS), compat=3)
        d.addPairwiseBilateral(sxy=data.draw(BANDWIDTHS), srgb=13, rgbim=image, compat=10)
        return np.array(d.inference(data.draw(st.sampled_from([0, 1, 5]))))

    q = _call(run, unary, image)
    if q is not None:
        _assert_marginals(q, (labels, h * w))


@FUZZ
@given(x=adversarial(shapes(2, 4)), size=st.tuples(st.integers(-1, 9), st.integers(-1, 9)),
       align_corners=st.booleans())
def test_resize_logits(x, size, align_corners):
    out = _call(lambda: segpost.resize_logits(x, size, align_corners=align_corners), x)
    if out is None:
        return
    out = np.asarray(out)
    assert out.shape[-2:] == size and np.isfinite(out).all()
    lo, hi = _float_range(x)  # bilinear weights are convex
    span = 1e-3 * max(1.0, abs(lo), abs(hi))
    assert out.min() >= lo - span and out.max() <= hi + span


@FUZZ
@given(x=adversarial(st.tuples(st.integers(0, 40), st.integers(0, 5), st.integers(0, 5))),
       size=st.tuples(st.integers(0, 12), st.integers(0, 12)))
def test_upsample_argmax(x, size):
    out = _call(lambda: segpost.upsample_argmax(x, size), x)
    if out is not None:
        out = np.asarray(out)
        assert out.shape == size and (out >= 0).all() and (out < np.shape(x)[0]).all()


@FUZZ
@given(c=LABEL_COUNTS, h=SIDES, w=SIDES, guide_channels=mostly([1, 3], [70]), data=st.data())
def test_joint_bilateral_upsample(c, h, w, guide_channels, data):
    coarse = data.draw(adversarial((c, h, w)))
    guide = data.draw(adversarial((2 * h + 1, 2 * w + 1, guide_channels), ANY_DTYPES))
    out = _call(lambda: segpost.joint_bilateral_upsample(
        coarse, guide, sigma_spatial=data.draw(BANDWIDTHS),
        sigma_color=data.draw(BANDWIDTHS)), coarse, guide)
    if out is None:
        return
    out = np.asarray(out)
    assert out.shape == (c, 2 * h + 1, 2 * w + 1) and np.isfinite(out).all()
    lo, hi = _float_range(coarse)  # a weighted average of the coarse scores
    span = 1e-4 * max(1.0, abs(lo), abs(hi))
    assert out.min() >= lo - span and out.max() <= hi + span


@st.composite
def label_maps(draw, shape, k):
    """Integer label maps, mostly valid for k classes (some out of range, or of a float dtype)."""
    values = draw(hnp.arrays(np.int64, shape, elements=mostly(range(max(k, 1)), [-1, k, 255, 1000])))
    dtype = draw(mostly(["int64", "uint8", "int32"], [">u2", "uint16", "bool", "float32"]))
    with np.errstate(all="ignore"):
        arr = values.astype(dtype) if dtype != "bool" else values > 0
    return draw(st.sampled_from([arr, arr, arr.T, arr.tolist()]))


@FUZZ
@given(shape=shapes(1, 3, min_side=1, max_side=8), k=mostly([2, 3, 5, 12], [0, -1, 1]),
       ignore=mostly([None, 255], [-1, 0, 2**63, [0, 3]]), data=st.data())
def test_confusion_matrix_and_seg_metrics(shape, k, ignore, data):
    pred = data.draw(label_maps(shape, k))
    target = data.draw(label_maps(np.shape(pred), k))
    matrix = _call(lambda: segpost.confusion_matrix(pred, target, k, ignore_index=ignore), pred, target)
    if matrix is None:
        return
    assert matrix.shape == (k, k) and (matrix >= 0).all() and matrix.sum() <= np.size(target)

    def update():
        metrics = segpost.SegMetrics(k, ignore_index=ignore)
        metrics.update(pred, target)
        return metrics

    metrics = _call(update, pred, target)
    assert metrics is not None, "SegMetrics refused what confusion_matrix took"
    np.testing.assert_array_equal(metrics.confusion, matrix)
    result = metrics.compute()
    assert 0 <= result.miou <= 1 or np.isnan(result.miou)


@FUZZ
@given(labels=adversarial(shapes(2, 3, max_side=8), ["uint8", "int32", "int64", ">i2", "bool", "float32"]),
       size=st.tuples(st.integers(-1, 12), st.integers(-1, 12)))
def test_resize_labels(labels, size):
    out = _call(lambda: segpost.resize_labels(labels, size), labels)
    if out is not None:
        out = np.asarray(out)
        assert out.shape[-2:] == size
        assert set(np.unique(out)) <= set(np.unique(np.asarray(labels)))  # nearest neighbour: no new labels


@FUZZ
@given(key=st.sampled_from(["confusion", "boundary_intersection", "boundary_union", "num_images", "num_invalid",
                            "num_scored_images", "per_image_sum"]),
       value=st.one_of(adversarial(shapes(0, 2, max_side=4), ANY_DTYPES), st.floats(allow_nan=True),
                       st.integers(-2**70, 2**70), st.none(), st.text(max_size=3)))
def test_seg_metrics_state_loads_whole_or_not_at_all(key, value):
    """A state with any one entry replaced loads and scores finitely, or raises a clean error and changes nothing."""
    metrics = segpost.SegMetrics(3, per_image=True, boundary=True)
    labels = np.zeros((2, 6, 6), np.int64)
    labels[:, 1:4, 1:4] = 1
    metrics.update(labels, labels)
    before = {k: np.array(v, copy=True) for k, v in metrics.state_dict().items()}
    state = {**metrics.state_dict(), key: value}
    try:
        metrics.load_state_dict(state)
    except CLEAN_ERRORS as exc:
        event(f"raised {type(exc).__name__}")
        after = metrics.state_dict()
        assert all(np.array_equal(np.asarray(after[k]), before[k]) for k in before)
        return
    result = metrics.compute()
    assert (metrics.confusion >= 0).all() and metrics.num_images >= 0 and metrics.num_scored_images >= 0
    assert np.isnan(result.miou) or 0 <= result.miou <= 1
