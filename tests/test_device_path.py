"""The torch-ops CRF (segpost.crf.device): crf_refine's GPU path and the training layer's GPU path, run here
on CPU tensors through the same code, against the compiled CPU path.

The CUDA extension's interface is emulated in torch ops (``FakeCudaExtension``)
so that the code that drives it (CudaLattice, the autograd function, the
layer's device path) runs without a GPU.
"""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from skimage import data

import segpost
from segpost._cuda import CudaLattice
from segpost.crf import device
from segpost.lattice_torch import TorchLattice
from segpost.nn import DenseCRF


class FakeCudaExtension:
    """``segpost._C_cuda``'s build/filter in torch ops on the CPU, with the kernels' data layout.

    build: the torch lattice's vertices, a CSR of corners by vertex in point
    order, neighbours as (d+1, M, 2); filter: splat as a gather over the CSR,
    [1/2, 1, 1/2] blurs (reversed for the transpose), slice, with optional
    pre/post row scales, in float32 like the kernels.
    """

    def build(self, features):
        lattice = TorchLattice(features.double())
        n, d1 = lattice.corner_vertex.shape
        vertex_of_corner = (lattice.corner_vertex - 1).reshape(-1)
        csr_corner = torch.sort(vertex_of_corner, stable=True).indices
        counts = torch.bincount(vertex_of_corner, minlength=lattice.num_vertices)
        csr_start = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
        neighbour = lattice.neighbours.permute(0, 2, 1).int().contiguous()
        return [lattice.corner_vertex.int(), lattice.weights.float(), neighbour, csr_start, csr_corner.int()]

    def filter(self, corner_vertex, weights, neighbour, csr_start, csr_corner, values, pre, post, transpose):
        assert values.dtype == torch.float32 and (pre is None or pre.dtype == torch.float32)
        n, d1 = corner_vertex.shape
        m, c = neighbour.shape[1], values.shape[1]
        scaled = values * pre[:, None] if pre is not None else values
        corners = csr_corner.long()
        contributions = weights.reshape(-1)[corners][:, None] * scaled[corners // d1]
        grid = torch.zeros(m + 1, c).index_add(0, corner_vertex.reshape(-1).long()[corners], contributions)
        for step in range(d1):
            lo, hi = neighbour[d1 - 1 - step if transpose else step].long().T
            grid = torch.cat([grid[:1], grid[1:] + 0.5 * (grid[lo] + grid[hi])])
        out = (weights[:, :, None] * grid[corner_vertex.long()]).sum(1) / (1 + 2.0 ** -(d1 - 1))
        return out * post[:, None] if post is not None else out


def photo(h, w, offset=0):
    return np.ascontiguousarray(data.astronaut()[100 + offset:100 + offset + h, 150:150 + w])


@st.composite
def refine_cases(draw):
    h, w = draw(st.sampled_from([(32, 48), (40, 40), (57, 33)]))
    stride = draw(st.sampled_from([1, 4, 8]))
    classes = draw(st.integers(1, 6))
    seed, offset = draw(st.integers(0, 1000)), draw(st.integers(0, 50))
    logits = (np.random.default_rng(seed).normal(size=(classes, -(-h // stride), -(-w // stride))) * 3)
    return (h, w, stride, classes, seed, offset), photo(h, w, offset), logits.astype(np.float32), \
        draw(st.booleans()), draw(st.booleans())


@given(refine_cases())
def test_torch_ops_refine_equals_the_compiled_cpu_path(case):
    _, image, logits, as_probs, align_corners = case
    scores = logits
    kwargs = {}
    if as_probs:
        e = np.exp(logits - logits.max(0))
        scores = (e / e.sum(0)).astype(np.float32) if logits.shape[0] > 1 else 1 / (1 + np.exp(-logits))
        kwargs = {"probs": scores}
    else:
        kwargs = {"logits": scores}
    params = segpost.CRFParams.deeplab().replace(iterations=5)
    want_labels, want_probs = segpost.crf_refine(image, params=params, align_corners=align_corners,
                                                 return_probs=True, **kwargs)
    run = dict(probabilities=as_probs, params=params, iterations=5, align_corners=align_corners, return_probs=True)
    # The same C++ lattice under the torch-ops code (features, resize, normalisation, mean field): equal.
    labels, probs = device.refine(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(scores), **run)
    assert labels.dtype == torch.int64 and labels.shape == want_labels.shape
    np.testing.assert_array_equal(labels.numpy(), want_labels)
    np.testing.assert_allclose(probs.numpy(), want_probs, atol=2e-5)
    # The torch lattice (the GPU fallback): float64 keys may put a grid point that lies exactly on a simplex
    # boundary into the other simplex (one vertex more or less), so a few pixels may differ.
    labels, probs = device.refine(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(scores), **run,
                                  compiled=False)
    assert (labels.numpy() == want_labels).mean() >= 0.995
    assert np.mean(np.abs(probs.numpy() - want_probs) < 2e-3) >= 0.99


def test_torch_ops_refine_rejects_bad_input():
    image = torch.from_numpy(photo(32, 32)).permute(2, 0, 1)
    params = segpost.CRFParams.deeplab()

    def run(scores, probabilities=False, img=image):
        return device.refine(img, scores, probabilities=probabilities, params=params, iterations=2,
                             align_corners=False, return_probs=False)

    with pytest.raises(ValueError, match="finite"):
        run(torch.full((3, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="larger than the image"):
        run(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="sum to 1"):
        run(torch.full((3, 4, 4), 0.5), probabilities=True)
    with pytest.raises(ValueError, match="ImageNet-normalised"):
        run(torch.zeros(3, 4, 4), img=torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="floating"):
        run(torch.zeros(3, 4, 4, dtype=torch.long))


def test_cuda_lattice_interface_filters_and_differentiates_like_the_torch_lattice():
    rng = np.random.default_rng(0)
    features = torch.from_numpy(rng.uniform(0, 4, size=(300, 3)).astype(np.float32))
    emulated = CudaLattice(features, FakeCudaExtension())
    reference = TorchLattice(features.double())
    values = torch.from_numpy(rng.normal(size=(300, 4)))
    torch.testing.assert_close(emulated.filter(values, normalize=True), reference.filter(values, normalize=True),
                               rtol=1e-4, atol=1e-5)
    scale = reference.filtered_ones().rsqrt()
    v = values.clone().requires_grad_()
    u = torch.from_numpy(rng.normal(size=(300, 4)))
    out = device.CompiledFilter.apply(v, emulated, scale.float(), scale.float())
    (u * out).sum().backward()
    want = scale[:, None] * reference.filter(scale[:, None] * u, adjoint=True)  # (s K s)^T u
    torch.testing.assert_close(v.grad, want, rtol=1e-4, atol=1e-5)


def test_layer_device_path_through_the_cuda_interface_equals_the_torch_lattice(monkeypatch):
    # nn.DenseCRF off the CPU: kernel_filters on the CUDA lattice (emulated here) with the autograd function.
    monkeypatch.setattr(device, "_lattice", lambda features, compiled: CudaLattice(features, FakeCudaExtension()))
    logits = torch.randn(2, 3, 16, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    images = torch.from_numpy(np.stack([photo(16, 20), photo(16, 20, 30)])).permute(0, 3, 1, 2)
    results = []
    for lattice in ("device", "torch"):
        crf = DenseCRF(3, iterations=3, lattice="torch").double()
        if lattice == "device":
            filters = crf._device_filters
            monkeypatch.setattr(crf, "_device_filters", lambda image, filters=filters: device.kernel_filters(
                device.grid_features(image, crf.pos_xy, crf.bi_xy, crf.bi_rgb), compiled=True))
        else:
            monkeypatch.undo()
        x = logits.clone().requires_grad_()
        out = crf(x, images)
        out.square().sum().backward()
        results.append((out.detach(), x.grad, crf.compatibility.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max()))
