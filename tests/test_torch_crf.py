"""The pure-torch lattice (against the C++ one) and the differentiable CRF layer.

GPU cases run where CUDA is available and show as skipped elsewhere.
"""
import numpy as np
import pytest
import torch
from hypothesis import given
from skimage import data

import segpost
from segpost.lattice_torch import TorchLattice
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
    torch.manual_seed(0)
    crf = DenseCRF(3, iterations=2, pos_xy=1.5, bi_xy=3.0, bi_rgb=40.0).double()
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
