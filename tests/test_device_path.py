"""The torch-ops CRF (segpost.crf.device): crf_refine's GPU path and the training layer's GPU path, run here
on CPU tensors through the same code, against the compiled CPU path.

The CUDA extension's interface is emulated in torch ops (``FakeCudaExtension``)
so that the code that drives it (CudaLattice, the autograd function, the
layer's device path) runs without a GPU.
"""
import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from skimage import data

import segpost
from segpost.crf import device, mean_field
from segpost.lattice import TorchLattice
from segpost.lattice.autograd import lattice_filter
from segpost.lattice.cuda import CudaLattice
from segpost.nn import DenseCRF


class FakeCudaExtension:
    """``segpost._C_cuda``'s build/filter in torch ops on the CPU, with the kernels' data layout and the
    binding's signatures (held to bindings_cuda.cpp by test_fake_extension_has_the_bindings_signatures).

    build: the torch lattice's vertices (each image's own in a batched
    build, numbered one image after another), a CSR of corners by vertex in
    point order cut into chunks of at most ``chunk`` corners, neighbours as
    (d+1, M, 2); the six parts the binding returns. filter: splat as a
    gather over the chunks, then their sums per vertex, [1/2, 1, 1/2] blurs
    (reversed for the transpose), slice, with optional pre/post row scales,
    in float32 like the kernels. (The kernels' own logic is emulated line by
    line in tests/cuda_emulation.py.)
    """

    def __init__(self, chunk=64):
        self.builds = []
        self.chunk = chunk  # kSplatChunk

    def build(self, features, points_per_image=0):
        self.builds.append((features.shape[0], points_per_image))
        n, d = features.shape
        if n == 0:
            return [torch.empty(0, d + 1, dtype=torch.int32), torch.empty(0, d + 1), torch.empty(
                d + 1, 0, 2, dtype=torch.int32), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long),
                torch.empty(0, dtype=torch.int32)]
        images = n // points_per_image if points_per_image else 1
        corner_vertex, weights, neighbours, offset = [], [], [], 0
        for part in features.chunk(images):
            lattice = TorchLattice(part.double())
            corner_vertex.append(lattice.corner_vertex + offset)
            nb = lattice.neighbours.permute(0, 2, 1)
            neighbours.append(torch.where(nb > 0, nb + offset, 0))
            weights.append(lattice.weights.float())
            offset += lattice.num_vertices
        corner_vertex, neighbour = torch.cat(corner_vertex), torch.cat(neighbours, 1).int().contiguous()
        vertex_of_corner = (corner_vertex - 1).reshape(-1)
        csr_corner = torch.sort(vertex_of_corner, stable=True).indices
        counts = torch.bincount(vertex_of_corner, minlength=offset)
        csr_start = torch.cumsum(counts, 0) - counts
        chunks_of_vertex = (counts + self.chunk - 1) // self.chunk
        vertex_chunk = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(chunks_of_vertex, 0)])
        owner = torch.repeat_interleave(chunks_of_vertex)
        within = torch.arange(len(owner)) - vertex_chunk[owner]
        chunk_start = torch.cat([csr_start[owner] + within * self.chunk, torch.tensor([vertex_of_corner.numel()])])
        return [corner_vertex.int(), torch.cat(weights), neighbour, chunk_start, vertex_chunk, csr_corner.int()]

    def filter(self, corner_vertex, weights, neighbour, chunk_start, vertex_chunk, csr_corner, values, pre_scale,
               post_scale, transpose):
        assert values.dtype == torch.float32 and (pre_scale is None or pre_scale.dtype == torch.float32)
        assert isinstance(transpose, bool)
        n, d1 = corner_vertex.shape
        m, c = neighbour.shape[1], values.shape[1]
        scaled = values * pre_scale[:, None] if pre_scale is not None else values
        corners = csr_corner.long()
        contributions = weights.reshape(-1)[corners][:, None] * scaled[corners // d1]
        chunk_of_entry = torch.repeat_interleave(chunk_start.diff())
        sums = torch.zeros(len(chunk_start) - 1, c).index_add(0, chunk_of_entry, contributions)
        vertex_of_chunk = torch.repeat_interleave(vertex_chunk.diff())
        grid = torch.zeros(m + 1, c).index_add(0, vertex_of_chunk + 1, sums)
        for step in range(d1):
            lo, hi = neighbour[d1 - 1 - step if transpose else step].long().T
            grid = torch.cat([grid[:1], grid[1:] + 0.5 * (grid[lo] + grid[hi])])
        out = (weights[:, :, None] * grid[corner_vertex.long()]).sum(1) / (1 + 2.0 ** -(d1 - 1))
        return out * post_scale[:, None] if post_scale is not None else out


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


def _device_refine(image, scores, *, probabilities, params, iterations, align_corners, return_probs, compiled=True):
    """crf_refine's device path on the CPU: the torch-ops code around the C++ lattice (or the torch lattice)."""
    from segpost.crf.inputs import refine_inputs

    inputs = refine_inputs(image, None if probabilities else scores, scores if probabilities else None,
                           device=torch.device("cpu"))
    return device.refine_on_device(inputs, params, iterations, align_corners, return_probs, compiled=compiled)


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
    labels, probs = _device_refine(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(scores), **run)
    assert labels.dtype == torch.int64 and labels.shape == want_labels.shape
    np.testing.assert_array_equal(labels.numpy(), want_labels)
    np.testing.assert_allclose(probs.numpy(), want_probs, atol=2e-5)
    # The torch lattice (the GPU fallback): float64 keys may put a grid point that lies exactly on a simplex
    # boundary into the other simplex (one vertex more or less), so a few pixels may differ; on pixel-wise
    # noise at stride 1 such a vertex moves the marginals of many pixels by up to a few 1e-2.
    labels, probs = _device_refine(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(scores), **run,
                                  compiled=False)
    assert (labels.numpy() == want_labels).mean() >= 0.995
    assert np.mean(np.abs(probs.numpy() - want_probs) < 2e-2) >= 0.99


def _outcome(call):
    """What a call gives a user: its exception's type and message (or None) and its warnings' messages."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            call()
            error = None
        except (TypeError, ValueError, MemoryError) as exc:
            error = (type(exc), str(exc))
    return error, [str(w.message) for w in caught]


def _bad_inputs():
    image = photo(32, 48)
    gray, rgba = image[..., 0], np.dstack([image, np.arange(32 * 48, dtype=np.uint8).reshape(32, 48)])
    logits = np.random.default_rng(0).normal(size=(3, 4, 6)).astype(np.float32)
    e = np.exp(logits)
    probs = e / e.sum(0)
    return {
        "neither": dict(image=image),
        "both": dict(image=image, logits=logits, probs=probs),
        "integer logits": dict(image=image, logits=logits.astype(np.int64)),
        "2-D logits": dict(image=image, logits=logits[0]),
        "empty logits": dict(image=image, logits=logits[:0]),
        "NaN": dict(image=image, logits=np.where(logits > 1, np.nan, logits).astype(np.float32)),
        "huge": dict(image=image, logits=logits * 1e16),
        "probabilities as logits": dict(image=image, logits=probs),
        "probs not summing to one": dict(image=image, probs=probs * 0.5),
        "negative probs": dict(image=image, probs=probs - 0.1),
        "larger than the image": dict(image=image[:3, :5], logits=logits),
        "transposed": dict(image=image, logits=np.ascontiguousarray(np.random.default_rng(1).normal(
            size=(3, 24, 8)).astype(np.float32))),
        "uneven scales": dict(image=image, logits=np.zeros((3, 4, 7), np.float32) + logits[:, :, :1]),
        "channels last": dict(image=image, logits=np.zeros((32, 48, 3), np.float32)),
        "empty image": dict(image=image[:0], logits=logits),
        "17 channels": dict(image=np.zeros((32, 48, 17), np.uint8), logits=logits),
        "4-D image": dict(image=image[None], logits=logits),
        "complex image": dict(image=image.astype(np.complex64), logits=logits),
        "ImageNet-normalised": dict(image=np.random.default_rng(2).normal(size=(32, 48, 3)).astype(np.float32),
                                    logits=logits),
        "0..255 floats": dict(image=image.astype(np.float32), logits=logits),
        "16-bit": dict(image=image.astype(np.uint16) * 200, logits=logits),
        "NaN image": dict(image=np.full((32, 48, 3), np.nan, np.float32), logits=logits),
        "dim integers": dict(image=(image > 128).astype(np.uint8), logits=logits),
        "RGBA": dict(image=rgba, logits=logits),
        "gray": dict(image=gray, logits=logits),
        "one channel": dict(image=image, logits=logits[:1]),
        "one channel probs": dict(image=image, probs=1 / (1 + np.exp(-logits[:1]))),
        "float16 probs": dict(image=image, probs=probs.astype(np.float16)),
        "volume scores, image": dict(image=image, logits=logits[:, None]),
        "volume, no whole stride": dict(image=np.zeros((6, 32, 48), np.int16) - 1000,
                                        logits=np.zeros((2, 4, 8, 12), np.float32)),
        "volume in HU": dict(image=np.zeros((6, 32, 48), np.int16) - 1000,
                             logits=np.random.default_rng(3).normal(size=(2, 3, 8, 12)).astype(np.float32)),
    }


@pytest.mark.parametrize("case", sorted(_bad_inputs()))
def test_both_paths_check_inputs_alike(case):
    # One front end (segpost.crf.inputs): the device path, run here on the CPU, gives the same errors,
    # warnings and results as the CPU path, for numpy and tensor inputs alike.
    from segpost.crf.refine import _crf_refine

    kwargs = _bad_inputs()[case]
    params = segpost.CRFParams.deeplab()

    def call(device=None, as_tensor=False):
        args = dict(kwargs)
        if as_tensor:
            for key in ("logits", "probs"):
                if args.get(key) is not None:
                    args[key] = torch.from_numpy(np.asarray(args[key]))
        return lambda: _crf_refine(args.pop("image"), args.pop("logits", None), args.pop("probs", None), params, 2,
                                   False, False, True, device=device)

    cpu = _outcome(call())
    assert _outcome(call(torch.device("cpu"))) == cpu
    assert _outcome(call(as_tensor=True)) == _outcome(call(torch.device("cpu"), as_tensor=True))
    if case in ("neither", "both", "gray", "one channel", "one channel probs", "float16 probs", "16-bit",
                "volume in HU"):
        return
    assert cpu[0] is not None or cpu[1], f"{case} neither raised nor warned"


def test_device_path_returns_the_scores_type():
    # Results follow the scores' type (numpy in, numpy out), whichever path runs.
    from segpost.crf.refine import _crf_refine

    image, logits = photo(32, 48), np.random.default_rng(0).normal(size=(3, 4, 6)).astype(np.float32)
    params = segpost.CRFParams.deeplab()
    for scores in (logits, torch.from_numpy(logits)):
        labels, probs = _crf_refine(torch.from_numpy(image).permute(2, 0, 1), scores, None, params, 2, False, True,
                                    True, device=torch.device("cpu"))
        assert type(labels) is type(scores) and type(probs) is type(scores)
        want = segpost.crf_refine(image, scores, iterations=2)
        assert type(want) is type(scores)
        assert (np.asarray(labels) == np.asarray(want)).all()


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
    out = lattice_filter(emulated, scale.float(), scale.float())(v)
    (u * out).sum().backward()
    want = scale[:, None] * reference.filter(scale[:, None] * u, adjoint=True)  # (s K s)^T u
    torch.testing.assert_close(v.grad, want, rtol=1e-4, atol=1e-5)


def test_layer_device_path_through_the_cuda_interface_equals_the_torch_lattice(monkeypatch):
    # nn.DenseCRF off the CPU: kernel_filters on the CUDA lattice (emulated here) with the autograd function.
    # The whole batch is one lattice per kernel, as the CUDA build makes it.
    extension = FakeCudaExtension()
    monkeypatch.setattr(mean_field, "lattice_for", lambda features, compiled, images=1: CudaLattice(
        features, extension, images=images))
    logits = torch.randn(3, 3, 16, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    images = torch.from_numpy(np.stack([photo(16, 20), photo(16, 20, 30), photo(16, 20, 60)])).permute(0, 3, 1, 2)
    results = []
    for lattice in ("device", "torch"):
        if lattice == "torch":
            monkeypatch.undo()
        crf = DenseCRF(3, iterations=3, lattice="torch").double()
        x = logits.clone().requires_grad_()
        out = crf(x, images)
        out.square().sum().backward()
        results.append((out.detach(), x.grad, crf.compatibility.grad))
    assert extension.builds == [(3 * 16 * 20, 16 * 20)] * 2
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max()))


# ------------------------------------------------- segpost.DenseCRF on the unary's device

def test_dense_crf_dispatches_on_the_unary_device():
    from segpost._validation import on_device

    assert on_device(torch.empty(2, device="meta"))
    assert not on_device(torch.empty(2)) and not on_device(np.empty(2))
    assert type(segpost.DenseCRF(np.zeros((2, 3, 3), np.float32))) is segpost.DenseCRF
    assert type(segpost.DenseCRF(torch.zeros(2, 3, 3))) is segpost.DenseCRF  # CPU tensors: the compiled model

    class WithOptions(segpost.DenseCRF):  # a user's subclass keeps its own signature
        def __init__(self, unary, option):
            super().__init__(unary)
            self.option = option

    assert WithOptions(np.zeros((2, 3, 3), np.float32), option=1).option == 1


@given(st.integers(2, 5), st.sampled_from(["potts", "diag", "matrix"]),
       st.sampled_from(["symmetric", "before", "after", "none"]), st.integers(0, 100), st.booleans())
def test_device_dense_crf_equals_the_cpu_model(labels, compat_kind, normalization, seed, volume):
    # The device class's code on CPU tensors (the C++ lattice under it), against the compiled model.
    rng = np.random.default_rng(seed)
    shape = (5, 7, 6) if volume else (18, 21)
    unary = rng.normal(size=(labels, *shape)).astype(np.float32) * 2
    compat = {"potts": 3.0, "diag": -rng.uniform(1, 4, labels),
              "matrix": rng.uniform(-2, 2, (labels, labels))}[compat_kind]
    image = rng.integers(0, 256, size=(*shape, 3)).astype(np.uint8)
    features = rng.uniform(0, 4, size=(int(np.prod(shape)), 2)).astype(np.float32)
    crfs = [segpost.DenseCRF(unary), device.DeviceDenseCRF(torch.from_numpy(unary))]
    for crf in crfs:
        crf.add_gaussian(2.0, compat=compat, normalization=normalization)
        crf.add_bilateral(image, 4.0, 30.0, compat=compat, normalization=normalization)
        crf.add_pairwise(features, compat=1.5, normalization=normalization)
    cpu, dev = crfs
    assert [t["num_vertices"] for t in dev.pairwise_terms] == [t["num_vertices"] for t in cpu.pairwise_terms]
    q_cpu, q_dev = cpu.inference(4), dev.inference(4)
    assert isinstance(q_dev, torch.Tensor) and q_dev.shape == (labels, *shape)
    np.testing.assert_allclose(q_dev.numpy(), q_cpu, atol=2e-4)
    np.testing.assert_allclose(dev.initial_q().numpy(), cpu.initial_q(), atol=1e-6)
    np.testing.assert_allclose(dev.step(torch.from_numpy(q_cpu)).numpy(), cpu.step(q_cpu), atol=2e-4)
    assert dev.kl_divergence(torch.from_numpy(q_cpu)) == pytest.approx(cpu.kl_divergence(q_cpu), rel=1e-4, abs=1e-2)
    agree = (dev.map(4).numpy() == cpu.map(4)).mean()
    assert agree >= 0.99


def test_device_dense_crf_rejects_bad_input():
    with pytest.raises(TypeError, match="floating"):
        device.DeviceDenseCRF(torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="finite"):
        device.DeviceDenseCRF(torch.full((2, 4, 4), float("nan")))
    crf = device.DeviceDenseCRF(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="compat"):
        crf.add_gaussian(3.0, compat=np.ones(5))
    with pytest.raises(ValueError, match="shaped like the unary"):
        crf.step(torch.zeros(3, 4, 4))


# ------------------------------------------------- the CUDA binding's interface, held without a GPU

def _binding_signatures():
    """From csrc/cuda/bindings_cuda.cpp: each bound function's C++ parameter names, the Python names and
    defaults its m.def gives (None: positional only), and the names of the tensors build returns."""
    import re
    from pathlib import Path

    source = (Path(__file__).resolve().parent.parent / "csrc" / "cuda" / "bindings_cuda.cpp").read_text()
    source = re.sub(r"//[^\n]*", "", source)
    found = {}
    for name in ("build", "filter"):
        head = re.search(rf"^\S[^\n(]*\b{name}\(([^)]*)\)\s*\{{", source, re.M | re.S)
        cpp = [re.sub(r"\s+", " ", p).strip().rsplit(" ", 1)[1] for p in head.group(1).split(",")]
        definition = re.search(rf'm\.def\("{name}",([^;]*)\);', source, re.S).group(1)
        args = re.findall(r'py::arg\("(\w+)"\)(?:\s*=\s*([^,)]+))?', definition)
        found[name] = (cpp, [(a, d.strip() or None) for a, d in args] or None)
    body = source[source.index("build(torch::Tensor features"):source.index("torch::Tensor filter(")]
    returns = [[n.strip() for n in r.split(",")] for r in re.findall(r"return \{([^}]*)\};", body, re.S)]
    return found, returns


def test_fake_extension_has_the_bindings_signatures():
    import inspect

    import cuda_emulation

    found, returns = _binding_signatures()
    (build_cpp, build_py), (filter_cpp, filter_py) = found["build"], found["filter"]
    assert build_cpp == ["features", "points_per_image"]
    assert build_py == [("features", None), ("points_per_image", "0")]
    assert filter_py is None  # positional only: CudaLattice passes the parts in order
    # build's named return (the last `return {...}`; the others, empty lattices, have no names) is filter's
    # first parameters, in order: CudaLattice hands the parts back whole.
    named = returns[-1]
    assert len(named) == 6 and filter_cpp[:6] == named
    assert filter_cpp[6:] == ["values", "pre_scale", "post_scale", "transpose"]
    # The test doubles take the same arguments in the same order.
    fake = FakeCudaExtension()
    build_sig = inspect.signature(fake.build).parameters
    assert list(build_sig) == build_cpp and build_sig["points_per_image"].default == 0
    assert list(inspect.signature(fake.filter).parameters) == filter_cpp
    assert list(inspect.signature(cuda_emulation.build).parameters)[:2] == build_cpp
    assert list(inspect.signature(cuda_emulation.filter).parameters) == filter_cpp
    # And return as many parts as the binding.
    features = torch.rand(40, 3) * 3
    assert len(fake.build(features)) == len(named) == len(cuda_emulation.build(features.numpy()))
    for empty in returns[:-1]:
        assert len(empty) == len(named)
    assert len(fake.build(torch.empty(0, 3))) == len(named)


@pytest.mark.parametrize("chunk", [1, 2, 64])
def test_cuda_lattice_through_the_binding_layout_equals_the_torch_lattice(chunk):
    # chunk < a vertex's corners: the splat's chunks and their per-vertex sums, as the kernels do them.
    rng = np.random.default_rng(chunk)
    features = torch.from_numpy(rng.uniform(0, 2, size=(200, 3)).astype(np.float32))
    extension = FakeCudaExtension(chunk=chunk)
    lattice = CudaLattice(features, extension)
    reference = TorchLattice(features.double())
    parts = lattice._parts
    assert len(parts) == 6 and (chunk == 64 or len(parts[3]) - 1 > lattice.num_vertices)
    values = torch.from_numpy(rng.normal(size=(200, 2)).astype(np.float32))
    for adjoint in (False, True):
        torch.testing.assert_close(lattice.filter(values, adjoint=adjoint),
                                   reference.filter(values.double(), adjoint=adjoint).float(), rtol=1e-4, atol=1e-5)


def test_cuda_lattice_refuses_empty_features():
    extension = FakeCudaExtension()
    for shape in ((0, 3), (5, 0)):
        with pytest.raises(ValueError, match="at least one point and one dimension"):
            CudaLattice(torch.empty(shape), extension)
    with pytest.raises(ValueError, match="features must be"):
        CudaLattice(torch.empty(4), extension)
    with pytest.raises(ValueError, match="do not split"):
        CudaLattice(torch.rand(5, 2), extension, images=2)
    assert extension.builds == []  # refused before the extension sees them
    # The binding itself returns an empty lattice for no points (bindings_cuda.cpp), as the double does.
    parts = extension.build(torch.empty(0, 3))
    assert extension.filter(*parts, torch.empty(0, 2), None, None, False).shape == (0, 2)


def _fresh_extension_state(monkeypatch):
    from segpost.lattice import cuda

    monkeypatch.setattr(cuda, "_TRIED", False)
    monkeypatch.setattr(cuda, "_EXTENSION", None)
    monkeypatch.setattr(cuda, "_STATUS", {"loaded": False, "how": None, "origin": None, "import_error": None,
                                          "error": None})
    return cuda


def test_a_failed_import_of_the_cuda_extension_is_warned_with_its_text(monkeypatch):
    import sys

    from torch.utils import cpp_extension

    import importlib.abc
    import importlib.machinery

    class BrokenBuild(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        """A built segpost._C_cuda whose libraries do not load."""

        def find_spec(self, name, path=None, target=None):
            return importlib.machinery.ModuleSpec(name, self) if name == "segpost._C_cuda" else None

        def create_module(self, spec):
            raise ImportError("libcudart.so.13: cannot open shared object file: No such file or directory")

        def exec_module(self, module):
            pass

    cuda = _fresh_extension_state(monkeypatch)
    monkeypatch.delitem(sys.modules, "segpost._C_cuda", raising=False)
    monkeypatch.setattr(sys, "meta_path", [BrokenBuild(), *sys.meta_path])
    monkeypatch.delattr(segpost, "_C_cuda", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    with pytest.warns(RuntimeWarning) as caught:
        assert cuda.cuda_extension() is None
    message = " ".join(str(w.message) for w in caught)
    assert "segpost._C_cuda did not import (ImportError: libcudart.so.13: cannot open" in message
    assert "no CUDA toolkit" in message and "pure-torch lattice" in message
    status = cuda.cuda_extension_status()
    assert not status["loaded"] and status["origin"] is None
    assert status["import_error"].startswith("ImportError: libcudart") and "no CUDA toolkit" in status["error"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cuda.cuda_extension() is None  # tried once: no second warning


def test_a_failed_just_in_time_build_is_warned_with_both_reasons(monkeypatch):
    import sys

    from torch.utils import cpp_extension

    cuda = _fresh_extension_state(monkeypatch)
    monkeypatch.setitem(sys.modules, "segpost._C_cuda", None)
    monkeypatch.delattr(segpost, "_C_cuda", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/nowhere")

    def load(*args, **kwargs):
        raise RuntimeError("Error building extension 'segpost_C_cuda'")

    monkeypatch.setattr(cpp_extension, "load", load)
    # The sources sit beside a checkout, not beside an installed wheel (CI): present them either way.
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda path: path.endswith((".cu", "bindings_cuda.cpp")) or
                        real_exists(path))
    with pytest.warns(RuntimeWarning) as caught:
        assert cuda.cuda_extension() is None
    messages = [str(w.message) for w in caught]
    assert "compiling the CUDA lattice just in time" in messages[0] and "did not import" in messages[0]
    assert "Error building extension" in messages[-1]
    assert cuda.cuda_extension_status()["error"] == "RuntimeError: Error building extension 'segpost_C_cuda'"


def test_a_prebuilt_cuda_extension_says_where_it_came_from(monkeypatch):
    import sys
    import types

    cuda = _fresh_extension_state(monkeypatch)
    module = types.ModuleType("segpost._C_cuda")
    module.__file__ = "/site-packages/segpost/_C_cuda.cpython-311-x86_64-linux-gnu.so"
    monkeypatch.setitem(sys.modules, "segpost._C_cuda", module)
    monkeypatch.delattr(segpost, "_C_cuda", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cuda.cuda_extension() is module
    assert cuda.cuda_extension_status() == {"loaded": True, "how": "prebuilt", "origin": module.__file__,
                                            "import_error": None, "error": None}


# ------------------------------------------------- the mean field's torch ops: no needless copies or products

class _CountTorchCalls(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_messages_skip_the_identity_and_the_zero_start():
    rng = np.random.default_rng(0)
    q = torch.from_numpy(rng.uniform(size=(30, 4)).astype(np.float32))
    matrix = torch.from_numpy(rng.normal(size=(4, 4)).astype(np.float32))
    filters = [lambda rows: rows * 2, lambda rows: rows + 1]
    with _CountTorchCalls() as calls:
        potts = mean_field.messages(q, filters, [0.5, -3.0], None)
    assert "__radd__" not in calls.names and "matmul" not in calls.names and "__matmul__" not in calls.names
    torch.testing.assert_close(potts, 0.5 * (q * 2) - 3.0 * (q + 1), rtol=0, atol=0)
    # None entries are the identity, the others matrices.
    eye = torch.eye(4)
    with _CountTorchCalls() as calls:
        mixed = mean_field.messages(q, filters, [0.5, -3.0], [None, matrix])
    assert calls.names.count("__matmul__") + calls.names.count("matmul") == 1
    torch.testing.assert_close(mixed, mean_field.messages(q, filters, [0.5, -3.0], torch.stack([eye, matrix])))
    assert mean_field.messages(q, [], [], None) == 0


def test_device_dense_crf_potts_terms_need_no_matrix():
    unary = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 10, 12)).astype(np.float32))
    crf = device.DeviceDenseCRF(unary)
    crf.add_gaussian(3.0, compat=3.0)
    assert crf._compatibility is None
    with _CountTorchCalls() as calls:
        crf.map(2)
    assert "__matmul__" not in calls.names and "matmul" not in calls.names
    crf.add_gaussian(2.0, compat=np.array([-1.0, -2.0, -3.0]))
    compat = crf._compatibility
    assert compat[0] is None and torch.equal(compat[1], torch.diag(torch.tensor([-1.0, -2.0, -3.0])))


def test_device_refine_hands_the_mean_field_point_major_rows(monkeypatch):
    # A transposed (channel-major) view would be copied by every iteration's softmax.
    seen = []
    real = device.mean_field

    def spy(scores, *args):
        seen.append(scores)
        return real(scores, *args)

    monkeypatch.setattr(device, "mean_field", spy)
    image, logits = photo(32, 48), np.random.default_rng(0).normal(size=(3, 8, 12)).astype(np.float32)
    e = np.exp(logits)
    for probabilities, scores in ((False, logits), (True, e / e.sum(0))):
        _device_refine(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(scores.astype(np.float32)),
                       probabilities=probabilities, params=segpost.CRFParams.deeplab(), iterations=2,
                       align_corners=False, return_probs=False)
        assert seen[-1].shape == (32 * 48, 3) and seen[-1].is_contiguous()


def test_cuda_lattice_refuses_the_normalised_adjoint():
    # The review's item: CUDA silently returned K'v / K1; it raises as the torch lattice does.
    lattice = CudaLattice(torch.rand(20, 2), FakeCudaExtension())
    with pytest.raises(ValueError, match="adjoint=True is defined for the unnormalised filter"):
        lattice.filter(torch.rand(20, 2), normalize=True, adjoint=True)
    with pytest.raises(ValueError, match="adjoint=True is defined for the unnormalised filter"):
        TorchLattice(torch.rand(20, 2)).filter(torch.rand(20, 2), normalize=True, adjoint=True)
