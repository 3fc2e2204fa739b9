"""DenseCRF against a brute-force dense CRF with exact Gaussian kernels, and its invariants."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from skimage import data

import segpost
from segpost import DenseCRF

from oracles import exact_mean_field, probe

# Differences between our marginals and the exact-kernel mean field on small
# photo crops (3x3 to 12x12), any normalisation and compatibility; the
# lattice's kernel approximation is the only source (pydensecrf's lattice
# shows the same differences; the fine agreement is tested against it). On
# crops this small the lattice is coarse and the largest difference of an
# example has a long tail, so each test bounds both the largest and the mean
# difference. Worst cases seen in over 100,000 random examples per setting,
# half of them at the maximum weight (python benchmarks/measure_crf_bounds.py, plus
# earlier searches with the same draws), then bounds with headroom:
# - smoothness kernel only (d = 2): one step 0.040 largest, 0.014 mean; after
#   10 iterations 0.035 largest, 0.012 mean;
# - with the bilateral kernel (d = 5, sparse on such tiny crops): one step
#   0.36 largest, 0.052 mean (99% of examples below 0.09 and 0.012); after
#   10 iterations 0.21 largest, 0.033 mean.
# One step uses Potts weights up to 3 (diagonal/matrix entries up to 2); the
# converged comparison uses up to 1.5, a contractive regime: stronger CRFs can
# amplify kernel differences at label boundaries into different fixed points.
# The drawn weight is the total over the kernels: with both, each gets half.
BOUNDS = {  # term -> (one step largest, one step mean, converged largest, converged mean)
    "gaussian": (0.06, 0.02, 0.05, 0.02),
    "bilateral": (0.45, 0.07, 0.3, 0.06),
}


def _bounds(term):
    return BOUNDS["gaussian" if term == "gaussian" else "bilateral"]


def _grid_features(h, w, sxy):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx.ravel(), yy.ravel()], 1) / sxy


def random_compat(kind, weight, labels, rng):
    """A compatibility of `kind`: the Potts weight itself, else random entries up to 2/3 of it."""
    if kind == "potts":
        return weight
    if kind == "diag":
        return rng.uniform(-2 * weight / 3, 0, size=labels).astype(np.float32)
    return rng.uniform(0, 2 * weight / 3, size=(labels, labels)).astype(np.float32)


@st.composite
def crf_problems(draw, max_weight=3.0):
    h, w = draw(st.integers(3, 12)), draw(st.integers(3, 12))
    labels = draw(st.integers(2, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    unary = rng.normal(scale=draw(st.floats(0.1, 2.0)), size=(labels, h, w)).astype(np.float32)
    kind = draw(st.sampled_from(["potts", "diag", "matrix"]))
    weight = draw(st.floats(0.0, max_weight)) if kind == "potts" else max_weight
    compat = random_compat(kind, weight, labels, rng)
    # "none" is the raw lattice sum, whose scale is the lattice's own, not the
    # exact Gaussian sum's: tested against pydensecrf instead.
    normalization = draw(st.sampled_from(["symmetric", "before", "after"]))
    term = draw(st.sampled_from(["gaussian", "bilateral", "both"]))
    y0, x0 = draw(st.integers(0, 400)), draw(st.integers(0, 400))
    image = data.astronaut()[y0 : y0 + h, x0 : x0 + w]
    return unary, compat, normalization, term, image


def _build(unary, compat, normalization, term, image):
    h, w = unary.shape[1:]
    if term == "both":  # the drawn weight is the total: each kernel gets half
        compat = compat / 2
    crf = DenseCRF(unary)
    exact_terms = []
    if term in ("gaussian", "both"):
        crf.add_gaussian(2.0, compat=compat, normalization=normalization)
        exact_terms.append((_grid_features(h, w, 2.0), compat, normalization))
    if term in ("bilateral", "both"):
        crf.add_bilateral(image, 5.0, 20.0, compat=compat, normalization=normalization)
        features = np.concatenate([_grid_features(h, w, 5.0), image.reshape(-1, 3) / 20.0], 1)
        exact_terms.append((features, compat, normalization))
    return crf, exact_terms


@given(crf_problems())
def test_one_step_matches_exact_mean_field(problem):
    unary, compat, normalization, term, image = problem
    crf, exact_terms = _build(*problem)
    labels = unary.shape[0]
    q0 = np.random.default_rng(0).dirichlet(np.ones(labels), size=unary[0].size).T.astype(np.float32)
    q1 = crf.step(q0.reshape(unary.shape)).reshape(labels, -1)
    _, messages = exact_mean_field(unary.reshape(labels, -1), exact_terms, 0)
    expected = np.exp(-unary.reshape(labels, -1) - messages(q0.astype(np.float64)))
    expected /= expected.sum(axis=0)
    diff = np.abs(q1 - expected)
    max_bound, mean_bound = _bounds(term)[:2]
    assert diff.max() <= max_bound
    assert diff.mean() <= mean_bound


def test_exact_comparison_detects_a_wrong_smoothness_bandwidth():
    # The bounds leave room for the lattice, not for a wrong kernel: against
    # an exact kernel of twice the bandwidth the same step fails them.
    rng = np.random.default_rng(0)
    unary = rng.normal(size=(3, 12, 12)).astype(np.float32)
    crf, exact_terms = _build(unary, 3.0, "symmetric", "gaussian", data.astronaut()[100:112, 200:212])
    q0 = np.random.default_rng(0).dirichlet(np.ones(3), size=144).T.astype(np.float32)
    q1 = crf.step(q0.reshape(unary.shape)).reshape(3, -1)
    max_bound, mean_bound = _bounds("gaussian")[:2]
    for bandwidth, within in ((1.0, True), (2.0, False)):
        terms = [(features / bandwidth, compat, norm) for features, compat, norm in exact_terms]
        _, messages = exact_mean_field(unary.reshape(3, -1), terms, 0)
        expected = np.exp(-unary.reshape(3, -1) - messages(q0.astype(np.float64)))
        diff = np.abs(q1 - expected / expected.sum(axis=0))
        assert (diff.max() <= max_bound and diff.mean() <= mean_bound) == within


@given(crf_problems(max_weight=1.5))
def test_converged_marginals_match_exact_mean_field(problem):
    unary, term = problem[0], problem[3]
    crf, exact_terms = _build(*problem)
    labels = unary.shape[0]
    q = crf.inference(10).reshape(labels, -1)
    expected, _ = exact_mean_field(unary.reshape(labels, -1), exact_terms, 10)
    diff = np.abs(q - expected)
    max_bound, mean_bound = _bounds(term)[2:]
    assert diff.max() <= max_bound
    assert diff.mean() <= mean_bound
    np.testing.assert_allclose(q.sum(axis=0), 1.0, rtol=1e-5)


@given(crf_problems(), st.integers(0, 6))
def test_inference_equals_repeated_steps(problem, iterations):
    crf, _ = _build(*problem)
    q = crf.initial_q()
    for _ in range(iterations):
        q = crf.step(q)
    np.testing.assert_allclose(crf.inference(iterations), q, atol=2e-6)
    np.testing.assert_array_equal(crf.map(iterations), np.argmax(crf.inference(iterations), axis=0))


def test_zero_pairwise_weight_gives_softmax_of_negated_unary():
    rng = np.random.default_rng(0)
    unary = rng.normal(scale=3, size=(5, 9, 11)).astype(np.float32)
    crf = DenseCRF(unary)
    crf.add_gaussian(3, compat=0.0)
    crf.add_bilateral(data.coffee()[:9, :11], 10, 10, compat=0.0)
    expected = np.exp(-unary.astype(np.float64))
    expected /= expected.sum(axis=0)
    np.testing.assert_allclose(crf.inference(7), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(DenseCRF(unary).inference(3), expected, rtol=1e-5, atol=1e-7)


def test_overwhelming_unary_is_kept():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(20, 20))
    unary = np.full((4, 20, 20), 50.0, np.float32)
    unary[labels, np.arange(20)[:, None], np.arange(20)[None, :]] = 0.0
    crf = DenseCRF(unary)
    crf.add_gaussian(3, compat=10)
    crf.add_bilateral(data.astronaut()[:20, :20], 30, 10, compat=10)
    np.testing.assert_array_equal(crf.map(10), labels)


def test_crf_removes_label_noise_on_a_photo_edge():
    image = np.zeros((40, 40, 3), np.uint8)
    image[:, 20:] = 180
    truth = (np.arange(40)[None, :] >= 20).repeat(40, 0).astype(int)
    rng = np.random.default_rng(1)
    noisy = np.where(rng.random(truth.shape) < 0.25, 1 - truth, truth)
    probs = np.stack([np.where(noisy == 0, 0.65, 0.35), np.where(noisy == 1, 0.65, 0.35)])
    crf = DenseCRF(-np.log(probs))
    crf.add_gaussian(3, compat=3)
    crf.add_bilateral(image, 20, 10, compat=5)
    assert (crf.map(5) == truth).mean() > 0.99
    assert (noisy == truth).mean() < 0.8


def test_kl_divergence_decreases_with_symmetric_kernels():
    rng = np.random.default_rng(3)
    crf = DenseCRF(rng.normal(size=(3, 24, 24)).astype(np.float32))
    crf.add_gaussian(3, compat=3)
    crf.add_bilateral(data.chelsea()[:24, :24], 10, 13, compat=4)
    q = crf.initial_q()
    kls = [crf.kl_divergence(q)]
    for _ in range(5):
        q = crf.step(q)
        kls.append(crf.kl_divergence(q))
    assert kls[-1] < kls[0]


def test_volumes_with_spacing_match_the_exact_crf():
    # A 3-D volume with anisotropic voxel spacing: features = index * spacing / sigma.
    rng = np.random.default_rng(0)
    unary = rng.normal(size=(3, 4, 6, 5)).astype(np.float32)
    intensity = rng.uniform(0, 100, size=(4, 6, 5))
    crf = DenseCRF(unary)
    crf.add_gaussian(3.0, compat=2, spacing=(2.5, 1.0, 1.0))
    crf.add_bilateral(intensity, 5.0, 20.0, compat=2, spacing=(2.5, 1.0, 1.0), channel_axis=None)
    zz, yy, xx = np.mgrid[0:4, 0:6, 0:5]
    pos = np.stack([xx.ravel(), yy.ravel(), 2.5 * zz.ravel()], 1)
    terms = [(pos / 3.0, 2, "symmetric"), (np.concatenate([pos / 5.0, intensity.reshape(-1, 1) / 20.0], 1), 2, "symmetric")]
    expected, _ = exact_mean_field(unary.reshape(3, -1), terms, 5)
    q = crf.inference(5)
    assert q.shape == (3, 4, 6, 5)
    # A fixed case, so a bound of its own: measured 0.020, twice that allowed
    # (the random crops' bound, 0.3, would hide a real error here).
    assert np.abs(q.reshape(3, -1) - expected).max() <= 0.04


def test_arbitrary_features_and_torch_in_torch_out():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    unary = torch.from_numpy(rng.normal(size=(3, 50)).astype(np.float32))
    crf = DenseCRF(unary)
    crf.add_pairwise(torch.from_numpy(rng.uniform(0, 3, size=(50, 4))), compat=2.0)
    q = crf.inference(3)
    assert isinstance(q, torch.Tensor) and q.shape == (3, 50)
    np.testing.assert_allclose(q.sum(0).numpy(), 1.0, rtol=1e-5)
    assert crf.map(3).dtype == torch.int64


@pytest.mark.parametrize("shape, labels", [((250, 300), 6), ((45, 100), 6), ((120, 150), 2), ((120, 150), 3)])
def test_results_do_not_depend_on_thread_count(shape, labels):
    # 250 x 300 points: several splat partitions, whose bounds fall inside
    # rows, and several 64 x 64 tiles per partition; 45 x 100: two small
    # partitions, each part of one row of tiles; 2 and 3 labels: the narrow
    # vertex rows of few labels.
    image = data.astronaut()[: shape[0], : shape[1]]
    unary = np.random.default_rng(0).normal(size=(labels, *shape)).astype(np.float32)
    previous = segpost.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            segpost.set_num_threads(threads)
            crf = DenseCRF(unary)
            crf.add_gaussian(3, compat=3)
            crf.add_bilateral(image, 30, 10, compat=5)
            results.append(crf.inference(4))
    finally:
        segpost.set_num_threads(previous)
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


def fast_and_generic(unary, adders, bilateral_first):
    """Two CRFs with the smoothness and appearance terms ``adders`` make (in that order, or reversed), the
    second with a third term of weight zero: it adds exactly 0 to every message but sends the model through
    the generic loop."""
    crfs = DenseCRF(unary), DenseCRF(unary)
    for crf in crfs:
        for add in adders(crf)[::-1] if bilateral_first else adders(crf):
            add()
    crfs[1].add_gaussian(1, compat=0.0)
    return crfs


@given(
    st.integers(1, 34), st.sampled_from(["symmetric", "none", "before", "after"]), st.booleans(),
    st.integers(1, 4), st.integers(0, 2**32 - 1),
)
def test_two_potts_terms_fast_path_equals_the_generic_loop(labels, normalization, bilateral_first, iterations, seed):
    # Two Potts terms of simplex sizes 3 and 6 (crf_refine's model) run a
    # dedicated update loop (up to 32 labels). A third term of weight zero
    # adds exactly 0 to every message but sends the model through the generic
    # loop: the results must be bit-identical, for every block count, both term
    # orders and with or without normalisation scales.
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(3, 40)), int(rng.integers(3, 90))
    y0, x0 = rng.integers(0, 400, size=2)
    image = data.astronaut()[y0 : y0 + h, x0 : x0 + w]
    unary = rng.normal(scale=2.0, size=(labels, h, w)).astype(np.float32)

    fast, generic = fast_and_generic(
        unary, lambda crf: [lambda: crf.add_gaussian(3, compat=3.0, normalization=normalization),
                            lambda: crf.add_bilateral(image, 20, 13, compat=5.0, normalization=normalization)],
        bilateral_first)
    np.testing.assert_array_equal(fast.inference(iterations), generic.inference(iterations))
    np.testing.assert_array_equal(fast.map(iterations), generic.map(iterations))
    # A step from a given Q: the first scatter reads Q instead of softmax(-U).
    q = rng.random(size=unary.shape).astype(np.float32)
    q /= q.sum(axis=0)
    np.testing.assert_array_equal(fast.step(q), generic.step(q))


@given(st.integers(1, 4), st.sampled_from(["symmetric", "none"]), st.booleans(), st.integers(1, 3),
       st.sampled_from(["lattice", "separable"]), st.integers(0, 2**32 - 1))
def test_volume_fast_path_equals_the_generic_loop(labels, normalization, bilateral_first, iterations, method, seed):
    # A volume with a one-channel scan has kernels of simplex sizes 4 and 5
    # (1 with the smoothness kernel's separable Gaussian, each voxel its own
    # row): with up to 4 labels (narrow rows) it runs its own update loop,
    # held bit-identical to the generic one as above.
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(2, 12, size=3))
    scan = rng.normal(40.0, 30.0, size=shape)
    unary = rng.normal(scale=2.0, size=(labels, *shape)).astype(np.float32)
    spacing = (2.5, 0.8, 0.8)

    fast, generic = fast_and_generic(
        unary, lambda crf: [lambda: crf.add_gaussian(1.5, compat=1.0, spacing=spacing, normalization=normalization,
                                                     method=method),
                            lambda: crf.add_bilateral(scan, 4.0, 10.0, compat=3.0, spacing=spacing,
                                                      channel_axis=None, normalization=normalization)],
        bilateral_first)
    assert [t["dim"] for t in fast.pairwise_terms] == ([4, 3] if bilateral_first else [3, 4])
    assert [t["method"] for t in fast.pairwise_terms] == (["lattice", method] if bilateral_first
                                                          else [method, "lattice"])
    np.testing.assert_array_equal(fast.inference(iterations), generic.inference(iterations))
    np.testing.assert_array_equal(fast.map(iterations), generic.map(iterations))


def test_grid_sweep_order_only_rounds_differently():
    # An image-shaped unary is swept tile by tile, a flat one point by point:
    # the same sums in another order.
    image = data.astronaut()[:200, :230]
    h, w = image.shape[:2]
    unary = np.random.default_rng(1).normal(size=(5, h, w)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    features = np.concatenate([np.stack([xx.ravel(), yy.ravel()], 1) / 20.0, image.reshape(-1, 3) / 10.0], 1)
    grid = DenseCRF(unary)
    flat = DenseCRF(unary.reshape(5, -1))
    for crf in (grid, flat):
        crf.add_pairwise(features, compat=4.0)
    q_grid, q_flat = grid.inference(5), flat.inference(5)
    np.testing.assert_allclose(q_grid.reshape(5, -1), q_flat, atol=2e-5)
    assert not np.array_equal(q_grid.reshape(5, -1), q_flat)  # the orders differ, so the rounding does


def test_many_labels_take_the_generic_path():
    rng = np.random.default_rng(0)
    for labels in (1, 7, 9, 64, 65, 150):
        unary = rng.normal(size=(labels, 6, 7)).astype(np.float32)
        crf = DenseCRF(unary)
        crf.add_gaussian(2, compat=1.5)
        q = crf.inference(3)
        expected, _ = exact_mean_field(unary.reshape(labels, -1), [(_grid_features(6, 7, 2.0), 1.5, "symmetric")], 3)
        assert np.abs(q.reshape(labels, -1) - expected).max() <= BOUNDS["gaussian"][2]


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: DenseCRF(np.zeros((0, 5))), ValueError, "non-empty"),
        (lambda: DenseCRF(np.zeros(5)), ValueError, "non-empty"),
        (lambda: DenseCRF(np.full((2, 3), np.nan)), ValueError, "finite"),
        (lambda: DenseCRF(np.zeros((2, 3), np.int32)), TypeError, "floating"),
        (lambda: DenseCRF(np.zeros((2, 4, 4))).add_gaussian(0), ValueError, "sigma"),
        (lambda: DenseCRF(np.zeros((2, 4, 4))).add_gaussian((1, 2, 3)), ValueError, "sigma"),
        (lambda: DenseCRF(np.zeros((2, 4, 4))).add_gaussian(1, compat=np.zeros(3)), ValueError, "compat"),
        (lambda: DenseCRF(np.zeros((2, 4, 4))).add_gaussian(1, compat=float("nan")), ValueError, "compat"),
        (lambda: DenseCRF(np.zeros((2, 4, 4))).add_gaussian(1, normalization="l2"), ValueError, "normalization"),
        (lambda: DenseCRF(np.zeros((2, 4, 4))).add_gaussian(1, kernel="box"), ValueError, "kernel"),
        (lambda: DenseCRF(np.zeros((2, 4, 4))).add_bilateral(np.zeros((5, 4, 3)), 1, 1), ValueError, "grid"),
        (lambda: DenseCRF(np.zeros((2, 4, 4))).add_bilateral(np.zeros((4, 4, 3)), 1, -1), ValueError, "sigma_color"),
        (lambda: DenseCRF(np.zeros((2, 6))).add_pairwise(np.zeros((5, 2))), ValueError, "one row per point"),
        (lambda: DenseCRF(np.zeros((2, 6))).inference(-1), ValueError, "iterations"),
        (lambda: DenseCRF(np.zeros((2, 6))).step(np.zeros((3, 6))), ValueError, "shaped like the unary"),
    ],
)
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_memory_estimate_refuses_huge_problems(monkeypatch):
    monkeypatch.setenv("SEGPOST_MAX_MEMORY_GB", "0.001")
    with pytest.raises(MemoryError, match="SEGPOST_MAX_MEMORY_GB"):
        DenseCRF(np.zeros((21, 256, 256), np.float32))


def test_smoothness_lattices_are_reused_across_images_of_one_size():
    from segpost.crf import model

    model._grid_lattices.clear()
    rng = np.random.default_rng(4)
    first = DenseCRF(rng.normal(size=(3, 40, 50)).astype(np.float32))
    first.add_gaussian(3, compat=3)
    second = DenseCRF(rng.normal(size=(3, 40, 50)).astype(np.float32))
    second.add_gaussian(3.0, compat=2)
    assert first._model is not second._model
    assert len(model._grid_lattices._entries) == 1  # one build, shared
    # The shared lattice gives what a fresh one on the same positions gives.
    yy, xx = np.mgrid[0:40, 0:50]
    fresh = DenseCRF(second._unary[:, :3].T.copy())
    fresh.add_pairwise(np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float32) * np.float32(1 / 3), compat=2)
    np.testing.assert_array_equal(second.inference(3).reshape(3, -1), fresh.inference(3))
    for sigma, shape in [(5, (40, 50)), (3, (50, 40)), ((3, 4), (40, 50))]:
        other = DenseCRF(rng.normal(size=(3, *shape)).astype(np.float32))
        other.add_gaussian(sigma)
    assert len(model._grid_lattices._entries) == 4  # other bandwidths and shapes are other lattices
    for sigma in (6, 7):
        DenseCRF(rng.normal(size=(3, 40, 50)).astype(np.float32)).add_gaussian(sigma)
    assert len(model._grid_lattices._entries) == model._grid_lattices.max_entries
    model._grid_lattices.clear()


def test_cached_smoothness_normalisations_match_fresh_ones():
    # The cached lattice also caches its normalisation scales, one set per
    # normalisation: each must be the one a fresh lattice computes, whichever
    # normalisation came first, and they are read-only (shared).
    from segpost.crf import model

    unary = np.random.default_rng(5).normal(size=(4, 30, 45)).astype(np.float32)
    yy, xx = np.mgrid[0:30, 0:45]
    positions = np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float32) * np.float32(1 / 3)
    model._grid_lattices.clear()
    for normalization in ("symmetric", "before", "none", "after", "symmetric"):
        cached = DenseCRF(unary)
        cached.add_gaussian(3, compat=3, normalization=normalization)
        fresh = DenseCRF(unary.reshape(4, -1))
        fresh.add_pairwise(positions, compat=3, normalization=normalization)
        np.testing.assert_array_equal(cached.inference(3).reshape(4, -1), fresh.inference(3))
    (_, _, scales), = model._grid_lattices._entries.values()
    assert set(scales) == {"symmetric", "before", "none", "after"}
    assert all(not a.flags.writeable for pair in scales.values() for a in pair if a is not None)
    model._grid_lattices.clear()


@pytest.mark.parametrize("extra", [3, 11, 44, 129])
@pytest.mark.parametrize("real_first", [True, False])
def test_wide_label_sets_agree_with_the_labels_that_carry_mass(extra, real_first):
    # Labels with an overwhelming unary have Q = 0 exactly, so they send no
    # messages: the 21 real labels' marginals must be those of the 21-label
    # CRF, wherever they sit in the row. Crosses the kernels' label blocks
    # (24, 32, 72, 152 lanes) up to the generic wide-row path, in the mean
    # field and the blur (real labels last: they fill the highest blocks).
    image = data.astronaut()[100:164, 150:250]
    unary = np.random.default_rng(1).normal(scale=2.0, size=(21, 64, 100)).astype(np.float32)
    dead = np.full((extra, 64, 100), 1e4, np.float32)
    wide = np.concatenate([unary, dead] if real_first else [dead, unary])
    results = []
    for u in (unary, wide):
        crf = DenseCRF(u)
        crf.add_gaussian(3.0, compat=3.0)
        crf.add_bilateral(image, 20.0, 13.0, compat=10.0)
        results.append(crf.inference(5))
    real = slice(0, 21) if real_first else slice(extra, extra + 21)
    np.testing.assert_allclose(results[1][real], results[0], rtol=0, atol=1e-6)
    assert np.all(np.delete(results[1], np.arange(real.start, real.stop), axis=0) == 0)


# --- inputs once refused, mishandled or turned into wrong numbers -------------------------------------------

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8)


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


@pytest.mark.parametrize("call, error, fragment", [
    (lambda: DenseCRF(np.zeros((3, 8, 8), np.float32)).inference(2**31), ValueError, "iterations"),
    (lambda: DenseCRF(np.zeros((3, 8, 8), np.float32)).add_gaussian(1e-50), ValueError, "sigma"),
    (lambda: DenseCRF(np.zeros((3, 8, 8), np.float32)).add_bilateral(IMAGE[:8, :8], 3, 1e-40), ValueError,
     "sigma_color"),
])
def test_probe_list(call, error, fragment):
    probe(call, error, fragment)
