"""The exact grid Gaussian (segpost.lattice.grid_gaussian): the C++ kernel and its torch twin against brute
force, the taps against scipy.ndimage, the mean field on it against an exact mean field, and the rule that
picks it."""
import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import segpost
from oracles import exact_mean_field, need
from segpost.lattice.grid_gaussian import (
    MAX_SEPARABLE_RADIUS, GridGaussian, TorchGridGaussian, separable_taps, smoothness_method,
)


def truncated_gaussian_matrix(shape, steps):
    """(N, N) float64 exp(-|p_i - p_j|^2 / 2) over the grid, zero where an axis's offset exceeds its radius."""
    radii = np.array([len(t) - 1 for t in separable_taps(steps, shape)])
    index = np.array(list(itertools.product(*[range(s) for s in shape])), np.float64).reshape(-1, len(shape))
    offset = np.abs(index[:, None, :] - index[None, :, :])
    return np.exp(-0.5 * ((offset * np.asarray(steps, np.float64)) ** 2).sum(-1)) * (offset <= radii).all(-1)


@st.composite
def grids(draw, max_size=9):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, max_size)) for _ in range(ndim))
    steps = tuple(draw(st.floats(0.15, 3.0)) for _ in range(ndim))
    return shape, steps


@given(grids(), st.integers(1, 5), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_filter_is_the_truncated_gaussian(grid, channels, images, seed):
    shape, steps = grid
    n = int(np.prod(shape))
    values = np.random.default_rng(seed).uniform(-1, 1, size=(images, n, channels)).astype(np.float32)
    expected = np.einsum("ij,bjc->bic", truncated_gaussian_matrix(shape, steps), values.astype(np.float64))
    scale = max(1.0, float(np.abs(expected).max()))
    for b in range(images):
        np.testing.assert_allclose(GridGaussian(shape, steps).filter_rows(values[b]), expected[b],
                                   atol=2e-6 * scale)
    torch = need("torch")
    twin = TorchGridGaussian(shape, steps, device="cpu", images=images)
    out = twin.filter_rows(torch.from_numpy(values.reshape(-1, channels))).numpy().reshape(values.shape)
    np.testing.assert_allclose(out, expected, atol=2e-6 * scale)


@pytest.mark.parametrize("sigma", [0.4, 0.5, 1.3, 1.875, 4.1, 6.0])
def test_taps_are_scipy_gaussian_filter_taps(sigma):
    # The same kernel as scipy.ndimage.gaussian_filter1d (mode "constant", its default truncation at 4 sigma),
    # up to scipy's normalisation of the taps to sum 1.
    ndimage = need("scipy.ndimage")
    length = 61
    delta = np.zeros(length)
    delta[30] = 1.0
    ours = GridGaussian((length,), (1.0 / sigma,)).filter_rows(delta[:, None].astype(np.float32))[:, 0]
    theirs = ndimage.gaussian_filter1d(delta, sigma, mode="constant", cval=0.0, truncate=4.0)
    np.testing.assert_allclose(ours / ours.sum(), theirs, atol=1e-7)
    np.testing.assert_array_equal(ours != 0, theirs != 0)  # the same radius


def test_kernel_is_cut_at_the_grid_and_the_radius():
    taps = separable_taps((0.1, 2.0, 1.0), (5, 64, 3))
    assert [len(t) - 1 for t in taps] == [4, 2, 2]  # 40 points cut to the grid's 4; 2 = round(4 / 2); 2 = size - 1
    assert all(t[0] == 1.0 and np.all(np.diff(t) < 0) for t in taps if len(t) > 1)


@given(st.integers(2, 4), st.tuples(*[st.integers(1, 4)] * 3), st.sampled_from([0.7, 1.0, 1.6]),
       st.sampled_from(["symmetric", "none", "before", "after"]), st.sampled_from(["potts", "diagonal", "matrix"]),
       st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_mean_field_on_it_is_the_exact_mean_field(labels, shape, sigma, normalization, compat_kind, iterations,
                                                   seed):
    # Grids of at most 4 points per axis and bandwidths of at least 0.7 points: the 4-bandwidth cut never
    # falls inside the grid, so the separable kernel is the untruncated Gaussian the oracle computes.
    rng = np.random.default_rng(seed)
    unary = rng.normal(scale=2.0, size=(labels, *shape)).astype(np.float32)
    compat = {"potts": 2.5, "diagonal": rng.uniform(-3, 0, labels).astype(np.float32),
              "matrix": rng.uniform(0, 3, (labels, labels)).astype(np.float32)}[compat_kind]
    spacing = (2.0, 1.0, 1.0)
    crf = segpost.DenseCRF(unary)
    crf.add_gaussian(sigma, compat=compat, spacing=spacing, normalization=normalization, method="separable")
    assert crf.pairwise_terms[0]["method"] == "separable"
    index = np.array(list(itertools.product(*[range(s) for s in shape])), np.float64)
    positions = index * (np.asarray(spacing) / sigma)
    expected, _ = exact_mean_field(unary.reshape(labels, -1), [(positions, compat, normalization)], iterations)
    np.testing.assert_allclose(crf.inference(iterations).reshape(labels, -1), expected, atol=2e-5)


def test_auto_is_separable_on_volumes_with_kernels_of_a_few_voxels():
    assert smoothness_method("auto", (64, 192, 192), (2.0, 0.53, 0.53)) == "separable"  # 1.5 mm, (3, 0.8, 0.8)
    assert smoothness_method("auto", (480, 640), (0.33, 0.33)) == "lattice"  # images: pydensecrf's numbers
    wide = 1.0 / (MAX_SEPARABLE_RADIUS / 4 + 0.5)  # a bandwidth whose radius passes the limit
    assert smoothness_method("auto", (64, 192, 192), (1.0, wide, 1.0)) == "lattice"
    assert smoothness_method("auto", (3, 4, 192), (1.0, wide, 1.0)) == "separable"  # cut to the short axis
    for method in ("lattice", "separable"):
        assert smoothness_method(method, (480, 640), (0.33, 0.33)) == method
    with pytest.raises(ValueError, match="method must be one of"):
        smoothness_method("exact", (4, 4, 4), (1.0, 1.0, 1.0))


def test_add_gaussian_takes_the_method():
    unary = np.random.default_rng(0).random((3, 6, 20, 20), dtype=np.float32)
    for method, expected in (("auto", "separable"), ("lattice", "lattice"), ("separable", "separable")):
        crf = segpost.DenseCRF(unary)
        crf.add_gaussian(1.5, spacing=(3.0, 0.8, 0.8), method=method)
        assert crf.pairwise_terms[0]["method"] == expected
    image_crf = segpost.DenseCRF(unary[:, 0])
    image_crf.add_gaussian(3)
    assert image_crf.pairwise_terms[0]["method"] == "lattice"
    with pytest.raises(ValueError, match="method must be one of"):
        segpost.DenseCRF(unary).add_gaussian(1.5, method="exact")


def test_separable_and_lattice_crfs_agree_on_a_phantom():
    # The same model but for the smoothness kernel's filter: the lattice approximates the Gaussian the
    # separable filter computes; the labels agree all but everywhere.
    from segpost._phantoms import ct_phantom, simulate_volume_network

    phantom = ct_phantom((12, 64, 64), seed=4)
    logits = segpost.resize_logits(simulate_volume_network(phantom.labels, 3, noise=1.2, seed=4), (12, 64, 64))
    labels = []
    for method in ("lattice", "separable"):
        crf = segpost.DenseCRF(-logits)
        crf.add_gaussian(1.5, compat=1.0, spacing=phantom.spacing, method=method)
        crf.add_bilateral(phantom.volume, 5.0, 10.0, compat=3.0, spacing=phantom.spacing, channel_axis=None)
        labels.append(crf.map(5))
    assert (labels[0] == labels[1]).mean() >= 0.999


def test_bad_kernels_raise_instead_of_crashing():
    from segpost import _C

    for steps in [(0.0, 1.0), (float("nan"), 1.0), (1.0, float("inf")), (-1.0, 1.0)]:
        with pytest.raises(ValueError, match="steps must be positive and finite"):
            GridGaussian((4, 4), steps)

    with pytest.raises(ValueError, match="taps of every axis"):
        _C.SeparableGaussian([4, 4], [[1.0]])
    with pytest.raises(ValueError, match="1 to its size taps"):
        _C.SeparableGaussian([2], [[1.0, 0.5, 0.1]])
    with pytest.raises(ValueError, match="finite"):
        _C.SeparableGaussian([4], [[1.0, float("nan")]])
    with pytest.raises(ValueError, match=">= 1"):
        _C.SeparableGaussian([0, 3], [[1.0], [1.0]])
    kernel = _C.SeparableGaussian([3, 3], [[1.0, 0.5], [1.0]])
    with pytest.raises(ValueError, match="one row per grid point"):
        kernel.filter(np.ones((8, 2), np.float32))
