"""The CUDA kernels: compile-checked with nvcc wherever nvcc exists; run only on a GPU."""
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_cuda_kernels_compile(tmp_path):
    result = subprocess.run(
        ["nvcc", "-std=c++17", "-O2", "-c", str(ROOT / "csrc" / "cuda" / "permutohedral_cuda.cu"),
         "-o", str(tmp_path / "permutohedral_cuda.o")],
        capture_output=True, text=True, timeout=600,
        # nvcc is not ours: keep `make sanitize`'s preloaded runtimes out of it.
        env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "permutohedral_cuda.o").stat().st_size > 0


def test_each_device_gets_its_lattice():
    torch = pytest.importorskip("torch")
    import segpost
    from segpost.lattice import TorchLattice, lattice_for

    assert isinstance(lattice_for(torch.rand(10, 2), compiled=True), segpost.PermutohedralLattice)  # the C++ one
    assert isinstance(lattice_for(torch.rand(10, 2), compiled=False), TorchLattice)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_lattice_matches_cpu_lattice():
    import torch

    import segpost
    from segpost.lattice.cuda import CudaLattice, cuda_extension

    ext = cuda_extension()
    if ext is None:
        pytest.skip("the CUDA extension could not be built here")
    rng = np.random.default_rng(0)
    features = rng.uniform(0, 5, size=(5000, 5)).astype(np.float32)
    values = rng.normal(size=(5000, 21)).astype(np.float32)
    gpu = CudaLattice(torch.from_numpy(features).cuda(), ext)
    cpu = segpost.PermutohedralLattice(features)
    assert gpu.num_vertices == cpu.num_vertices
    out = gpu.filter(torch.from_numpy(values).cuda(), normalize=True).cpu().numpy()
    np.testing.assert_allclose(out, cpu.filter(values, normalize=True), atol=1e-4)
    again = gpu.filter(torch.from_numpy(values).cuda(), normalize=True).cpu().numpy()
    np.testing.assert_array_equal(out, again)  # deterministic: gather splat, no float atomics


# ------------------------------------------------- the kernels' logic, emulated on the CPU (tests/cuda_emulation.py)

def test_emulation_constants_are_the_kernels():
    import re

    import cuda_emulation

    header = (ROOT / "csrc" / "cuda" / "permutohedral_cuda.h").read_text()
    simplex = (ROOT / "csrc" / "simplex.h").read_text()
    assert int(re.search(r"kSplatChunk = (\d+);", header).group(1)) == cuda_emulation.SPLAT_CHUNK
    assert float(re.search(r"kKeyLimit = ([\d.]+);", simplex).group(1)) == cuda_emulation.KEY_LIMIT


@pytest.mark.slow
@pytest.mark.parametrize("d", [2, 5])
def test_emulated_kernels_equal_the_cpp_lattice_whatever_the_insert_order(d):
    import cuda_emulation

    import segpost

    rng = np.random.default_rng(d)
    n = 120
    # A few repeated points: keys shared by several corners race for one slot.
    features = rng.uniform(0, 3, size=(n, d)).astype(np.float32)
    features[n // 2:n // 2 + 10] = features[0]
    values = rng.normal(size=(n, 3)).astype(np.float32)
    cpu = segpost.PermutohedralLattice(features)
    corners = n * (d + 1)
    orders = [None, rng.permutation(corners), rng.permutation(corners)[::-1]]
    builds = [cuda_emulation.build(features, insert_order=order, chunk=4) for order in orders]
    for parts in builds:
        assert parts[2].shape[1] == cpu.num_vertices
        for got, first in zip(parts, builds[0]):  # vertex numbering by first occurrence, not by the race's winner
            np.testing.assert_array_equal(got, first)
    lattice = builds[0]
    assert len(lattice[3]) - 1 > cpu.num_vertices  # chunk=4: some vertices gather several chunks
    out = cuda_emulation.filter(*lattice, values)
    np.testing.assert_allclose(out, cpu.filter(values), rtol=1e-5, atol=1e-5)
    # One chunk per vertex (the kernels' default size here) sums in another order: equal to rounding.
    whole = cuda_emulation.filter(*cuda_emulation.build(features), values)
    np.testing.assert_allclose(whole, out, rtol=1e-5, atol=1e-5)
    # The transpose with swapped scales is the adjoint: <u, post K(pre v)> = <pre K^T(post u), v>.
    pre, post = rng.uniform(0.5, 2, n).astype(np.float32), rng.uniform(0.5, 2, n).astype(np.float32)
    u = rng.normal(size=(n, 3)).astype(np.float32)
    forward = cuda_emulation.filter(*lattice, values, pre, post)
    backward = cuda_emulation.filter(*lattice, u, post, pre, transpose=True)
    np.testing.assert_allclose(np.vdot(u, forward), np.vdot(backward, values), rtol=1e-4)
    np.testing.assert_allclose(backward, cpu.filter(u * post[:, None], adjoint=True) * pre[:, None],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_emulated_batched_build_is_each_images_own_lattice():
    import cuda_emulation

    rng = np.random.default_rng(3)
    images = [rng.uniform(0, 3, size=(60, 3)).astype(np.float32) + shift for shift in (0.0, 0.4, 10.0)]
    values = rng.normal(size=(180, 2)).astype(np.float32)
    batched = cuda_emulation.build(np.concatenate(images), points_per_image=60, chunk=4)
    alone = [cuda_emulation.build(image, chunk=4) for image in images]
    # Images 0 and 1 overlap in feature space, but the image index keeps their vertices apart.
    assert batched[2].shape[1] == sum(parts[2].shape[1] for parts in alone)
    want = np.concatenate([cuda_emulation.filter(*parts, rows) for parts, rows in zip(alone, np.split(values, 3))])
    np.testing.assert_array_equal(cuda_emulation.filter(*batched, values), want)


def test_fused_elevation_changes_last_bits_not_simplices():
    # nvcc fuses the elevation's `running - j * cf` into one multiply-add; the emulation rounds twice
    # unless fused=True. The last bits of some elevations differ, the lattice does not: compare the
    # integer parts exactly and the float32 weights with a tolerance.
    import math

    import cuda_emulation
    from skimage import data

    crop = data.astronaut()[100:124, 150:174].astype(np.float32)
    yy, xx = np.mgrid[:24, :24].astype(np.float32)
    features = np.concatenate([np.stack([xx / 80, yy / 80], -1).reshape(-1, 2), crop.reshape(-1, 3) / 13], 1)
    d = features.shape[1]
    scale = [math.sqrt(2 / 3) * (d + 1) / math.sqrt((i + 1) * (i + 2)) for i in range(d)]
    positions = [[float(x) * s for x, s in zip(row, scale)] for row in features]
    differ = [(a, b) for p in positions for a, b in zip(cuda_emulation.elevate(p, d)[1:],
                                                        cuda_emulation.elevate(p, d, fused=True)[1:]) if a != b]
    assert differ and all(abs(a - b) <= 2 * math.ulp(b) for a, b in differ)
    plain, fused = cuda_emulation.build(features), cuda_emulation.build(features, fused=True)
    for i in (0, 2, 3, 4, 5):  # vertex ids, neighbours, chunks, CSR
        np.testing.assert_array_equal(plain[i], fused[i])
    np.testing.assert_allclose(plain[1], fused[1], rtol=1e-6, atol=1e-7)
    values = np.random.default_rng(0).normal(size=(len(features), 2)).astype(np.float32)
    np.testing.assert_allclose(cuda_emulation.filter(*plain, values), cuda_emulation.filter(*fused, values),
                               rtol=1e-5, atol=1e-6)


def test_emulated_empty_build_filters_nothing():
    import cuda_emulation

    parts = cuda_emulation.build(np.zeros((0, 3), np.float32))
    assert len(parts) == 6 and parts[2].shape == (4, 0, 2)
    assert cuda_emulation.filter(*parts, np.zeros((0, 2), np.float32)).shape == (0, 2)
