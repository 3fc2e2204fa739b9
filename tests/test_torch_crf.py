"""The pure-torch lattice (against the C++ one) and the differentiable CRF layer.

GPU cases run where CUDA is available and show as skipped elsewhere.
"""
import numpy as np
import pytest
import torch
from hypothesis import given
from skimage import data

import segpost
from segpost.lattice import TorchLattice
from segpost.nn import DenseCRF

from test_lattice import point_sets

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@given(point_sets())
def test_torch_lattice_equals_cpp_lattice(data_):
    # Jittered off exact ties (grid layouts): there the two implementations'
    # different summation orders may round a point to either adjacent simplex.
    features, values = data_
    features = features + np.random.default_rng(3).uniform(0, 1e-6, size=features.shape)
    ours = TorchLattice(torch.from_numpy(features))
    ref = segpost.PermutohedralLattice(features)
    assert ours.num_vertices == ref.num_vertices
    scale = np.abs(values).max() * (features.shape[1] + 1)
    np.testing.assert_allclose(ours.filter(torch.from_numpy(values)).numpy(), ref.filter(values), atol=1e-5 * scale)
    np.testing.assert_allclose(ours.filter(torch.from_numpy(values), normalize=True).numpy(),
                               ref.filter(values, normalize=True), atol=1e-5 * np.abs(values).max())
    np.testing.assert_allclose(ours.filter(torch.from_numpy(values), adjoint=True).numpy(),
                               ref.filter(values, adjoint=True), atol=1e-5 * scale)


@given(point_sets(max_points=60))
def test_autograd_gradient_is_the_adjoint_filter(data_):
    features, u = data_
    features = features + np.random.default_rng(3).uniform(0, 1e-6, size=features.shape)
    lattice = TorchLattice(torch.from_numpy(features))
    v = torch.from_numpy(np.random.default_rng(0).normal(size=u.shape)).requires_grad_()
    (torch.from_numpy(u) * lattice.filter(v)).sum().backward()
    np.testing.assert_allclose(v.grad.numpy(), lattice.filter(torch.from_numpy(u), adjoint=True).numpy(), atol=1e-9)


def test_layer_gradcheck_in_float64():
    # The torch lattice computes in float64: gradcheck's tolerances hold there (the compiled lattice is float32).
    torch.manual_seed(0)
    crf = DenseCRF(3, iterations=2, pos_xy=1.5, bi_xy=3.0, bi_rgb=40.0, lattice="torch").double()
    logits = torch.randn(1, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    images = torch.rand(1, 3, 3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, w, c: crf(x, images), (logits, crf.kernel_weights, crf.compatibility))


def test_layer_matches_crf_refine_with_potts_initialisation():
    image = data.astronaut()[:40, :48]
    logits = torch.randn(1, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    out = DenseCRF(3, iterations=5, learnable=False)(logits, torch.from_numpy(image).permute(2, 0, 1)[None])
    expected = segpost.crf_refine(image, logits[0].numpy(), params="pydensecrf", iterations=5)
    assert (out[0].argmax(0).numpy() == expected).mean() > 0.995


def test_training_the_compatibility_lowers_the_loss():
    torch.manual_seed(0)
    image = np.zeros((24, 24, 3), np.uint8)
    image[:, 12:] = 200
    target = torch.from_numpy((np.arange(24)[None, :] >= 12).repeat(24, 0).astype(np.int64))[None]
    noisy = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 2 - 1
    noisy = noisy + torch.randn(noisy.shape, generator=torch.Generator().manual_seed(1)) * 1.5
    crf = DenseCRF(2, iterations=3, pos_weight=0.5, bi_weight=0.5, bi_xy=10, bi_rgb=20)
    images = torch.from_numpy(image).permute(2, 0, 1)[None]
    optimiser = torch.optim.Adam(crf.parameters(), lr=0.2)
    losses = []
    for _ in range(8):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(crf(noisy, images), target)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_layer_shapes_and_bad_input():
    crf = DenseCRF(4, iterations=1)
    out = crf(torch.randn(2, 4, 5, 6), torch.rand(2, 3, 5, 6))
    assert out.shape == (2, 4, 5, 6) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="logits"):
        crf(torch.randn(2, 3, 5, 6), torch.rand(2, 3, 5, 6))
    with pytest.raises(ValueError, match="images"):
        crf(torch.randn(2, 4, 5, 6), torch.rand(2, 3, 5, 7))
    with pytest.raises(ValueError, match="num_classes"):
        DenseCRF(0)
    with pytest.raises(ValueError, match="ImageNet-normalised"):  # crf_refine's image rule
        crf(torch.randn(2, 4, 5, 6), torch.randn(2, 3, 5, 6))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        crf(torch.randn(2, 4, 5, 6), torch.rand(2, 3, 5, 6) * 255)
    with pytest.raises(ValueError):
        TorchLattice(torch.zeros(0, 2))


@cuda
def test_cuda_layer_matches_cpu_and_is_deterministic():
    image = torch.from_numpy(data.astronaut()[:64, :64]).permute(2, 0, 1)[None]
    logits = torch.randn(1, 5, 64, 64, generator=torch.Generator().manual_seed(0))
    crf = DenseCRF(5, iterations=5, learnable=False)
    cpu = crf(logits, image)
    gpu = crf.cuda()(logits.cuda(), image.cuda())
    assert (gpu.argmax(1).cpu() == cpu.argmax(1)).float().mean() >= 0.995
    assert torch.equal(crf(logits.cuda(), image.cuda()).argmax(1), gpu.argmax(1))


@cuda
def test_cuda_batch_equals_one_by_one_and_no_memory_growth():
    crf = DenseCRF(3, iterations=2, learnable=False).cuda()
    logits = torch.randn(3, 3, 32, 32, device="cuda")
    images = torch.rand(3, 3, 32, 32, device="cuda")
    batch = crf(logits, images)
    for i in range(3):
        assert torch.allclose(batch[i], crf(logits[i:i + 1], images[i:i + 1])[0], atol=1e-5)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(100):
        crf(logits, images)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= before + 1024


def _layer_inputs(b=2, c=4, h=20, w=24, seed=0):
    rng = torch.Generator().manual_seed(seed)
    images = torch.from_numpy(np.stack([data.astronaut()[40 * i:40 * i + h, 60:60 + w] for i in range(b)]))
    return torch.randn(b, c, h, w, generator=rng, dtype=torch.float64), images.permute(0, 3, 1, 2)


def _gradients(crf, logits, images, weights):
    logits = logits.clone().requires_grad_()
    crf.zero_grad()
    loss = (crf(logits, images) * weights).sum()
    loss.backward()
    return loss.detach(), logits.grad, crf.kernel_weights.grad.clone(), crf.compatibility.grad.clone()


def test_compiled_filter_backward_is_the_exact_adjoint():
    crf = DenseCRF(3)
    _, images = _layer_inputs(b=1)
    rng = torch.Generator().manual_seed(1)
    for kernel in crf._compiled_filters(images[0].double()):
        v = torch.randn(480, 3, generator=rng, dtype=torch.float64, requires_grad=True)
        u = torch.randn(480, 3, generator=rng, dtype=torch.float64)
        (adjoint_u,) = torch.autograd.grad((u * kernel(v)).sum(), v)   # K^T u by the backward pass
        # <u, K v> = <K^T u, v> up to float32 rounding of the lattice
        assert float((u * kernel(v)).sum().detach()) == pytest.approx(float((adjoint_u * v).sum()), rel=1e-5)


def test_compiled_layer_gradients_equal_the_torch_lattice_and_finite_differences():
    logits, images = _layer_inputs()
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    compiled = DenseCRF(4, iterations=3).double()
    reference = DenseCRF(4, iterations=3, lattice="torch").double()
    with torch.no_grad():  # a non-Potts start, so every gradient is exercised
        for crf in (compiled, reference):
            crf.compatibility.copy_(torch.eye(4).repeat(2, 1, 1) + 0.3 * torch.randn(
                2, 4, 4, generator=torch.Generator().manual_seed(3)))
    got, want = _gradients(compiled, logits, images, weights), _gradients(reference, logits, images, weights)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-4 * float(b.abs().max()))
    # A central finite difference along a random direction of the logits.
    direction = torch.randn(logits.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    eps = 1e-2
    with torch.no_grad():
        plus = (compiled(logits + eps * direction, images) * weights).sum()
        minus = (compiled(logits - eps * direction, images) * weights).sum()
    assert float((plus - minus) / (2 * eps)) == pytest.approx(float((got[1] * direction).sum()), rel=1e-3)


def test_compiled_layer_batch_equals_one_by_one_and_ignores_thread_count():
    logits, images = _layer_inputs(b=3)
    crf = DenseCRF(4, iterations=3)
    batch = crf(logits.float(), images)
    for i in range(3):
        torch.testing.assert_close(batch[i], crf(logits[i:i + 1].float(), images[i:i + 1])[0], rtol=0, atol=0)
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(5))
    previous = segpost.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            segpost.set_num_threads(threads)
            results.append(_gradients(crf, logits.float(), images, weights))
    finally:
        segpost.set_num_threads(previous)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_torch_lattice_int64_codes_give_the_cpp_vertices():
    # One int64 code per key instead of unique(dim=0): the same vertex count as the C++ lattice on images.
    image = data.astronaut()[:48, :64].astype(np.float64)
    yy, xx = np.mgrid[0:48, 0:64]
    features = np.concatenate([np.stack([xx, yy], -1) / 7.0, image / 13.0], -1).reshape(-1, 5)
    features += np.random.default_rng(0).uniform(0, 1e-6, size=features.shape)
    assert TorchLattice(torch.from_numpy(features)).num_vertices == segpost.PermutohedralLattice(features).num_vertices
