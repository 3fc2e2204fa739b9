"""The one prepared device check: segpost's CUDA path against its CPU path, and its timings, on one GPU.

Meant for a single H100/H200 and under 5 minutes, after segpost is installed
with its CUDA kernels (``SEGPOST_CUDA=1 pip install --no-build-isolation .``;
otherwise the first GPU call compiles them just in time). Prints one line
per check and a timing table; exits non-zero if a check fails.

Checks: vertices, filter and adjoint of the CUDA lattice against the C++
lattice; a batched build against its images one by one and the chunked
splat on long rows; segpost.DenseCRF on a CUDA unary and crf_refine labels
on the GPU against the CPU (>= 99.9% equal);
nn.DenseCRF gradients on the GPU against the CPU; determinism (the same
bits twice); no memory growth over repeated calls. Timings: crf_refine
512x512, 21 labels, 10 iterations, alone and per image in a batch of 8;
320x240, 21 labels, 10 iterations; nn.DenseCRF forward + backward (4, 21,
256, 256).

Run:  python benchmarks/gpu_check.py
"""
import sys

import numpy as np
import torch

import segpost
from segpost.lattice.cuda import CudaLattice, cuda_extension
from segpost.benchmarking import photo, time_calls
from segpost.nn import DenseCRF

FAILURES = []


def check(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
    if not ok:
        FAILURES.append(name)


def gpu_time(fn, repeats=10):
    """Median seconds of ``fn`` after one warm-up call, each call waited for on the device."""
    return time_calls(fn, repeats=repeats, warmup=1, sync=torch.cuda.synchronize).median


def main():
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    ext = cuda_extension()
    check("CUDA extension available", ext is not None)
    if ext is None:
        sys.exit(1)
    print(torch.cuda.get_device_name(), torch.__version__)
    rng = np.random.default_rng(0)

    # Lattice: vertices, filter, adjoint.
    features = rng.uniform(0, 20, size=(200_000, 5)).astype(np.float32)
    values = rng.normal(size=(200_000, 21)).astype(np.float32)
    cpu = segpost.PermutohedralLattice(features)
    gpu = CudaLattice(torch.from_numpy(features).cuda(), ext)
    check("vertices", gpu.num_vertices == cpu.num_vertices, f"{gpu.num_vertices} vs {cpu.num_vertices}")
    for adjoint in (False, True):
        got = gpu.filter(torch.from_numpy(values).cuda(), adjoint=adjoint).cpu().numpy()
        want = cpu.filter(values, adjoint=adjoint)
        error = float(np.abs(got - want).max() / np.abs(want).max())
        check(f"filter{' (adjoint)' if adjoint else ''}", error < 1e-5, f"max relative error {error:.2e}")

    # A batched build is each image's own lattice; long CSR rows (a flat photo region under a wide
    # bilateral kernel) go through the chunked splat.
    flat = np.zeros((2, 256, 256, 3), np.float32)
    flat[1, :, 128:] = 200
    rows_of = [np.concatenate([np.stack(np.meshgrid(np.arange(256), np.arange(256)), -1).reshape(-1, 2) / 80.0,
                               im.reshape(-1, 3) / 13.0], 1).astype(np.float32) for im in flat]
    batched = CudaLattice(torch.from_numpy(np.concatenate(rows_of)).cuda(), ext, images=2)
    alone = [CudaLattice(torch.from_numpy(r).cuda(), ext) for r in rows_of]
    check("batched build = its images' vertices", batched.num_vertices == sum(a.num_vertices for a in alone))
    v = torch.from_numpy(rng.normal(size=(2 * 256 * 256, 4)).astype(np.float32)).cuda()
    split = torch.cat([a.filter(part) for a, part in zip(alone, v.chunk(2))])
    check("batched filter = one by one", bool(torch.equal(batched.filter(v), split)))
    long_rows = float((batched._parts[3].numel() - 1) / batched.num_vertices)
    want = np.concatenate([segpost.PermutohedralLattice(r).filter(part) for r, part in
                           zip(rows_of, v.cpu().numpy().reshape(2, -1, 4))])
    error = float(np.abs(split.cpu().numpy() - want).max() / np.abs(want).max())
    check("chunked splat vs CPU", error < 1e-5, f"max relative error {error:.2e}, {long_rows:.2f} chunks/vertex")

    # segpost.DenseCRF on a CUDA unary: the general model on the device.
    crop = photo(512)[:128, :128]
    unary = rng.normal(size=(6, 128, 128)).astype(np.float32) * 2
    labels_of = []
    for u in (unary, torch.from_numpy(unary).cuda()):
        model = segpost.DenseCRF(u)
        model.add_gaussian(3, compat=3)
        model.add_bilateral(crop, 60, 10, compat=np.linspace(-6, -2, 6))
        labels_of.append(model.map(5))
    check("DenseCRF(cuda unary) returns device tensors", labels_of[1].is_cuda)
    agreement = float((labels_of[1].cpu().numpy() == labels_of[0]).mean())
    check("DenseCRF(cuda unary) labels vs CPU", agreement >= 0.999, f"{100 * agreement:.3f}% equal")

    # crf_refine: labels, determinism, memory.
    image = photo(512)
    logits = torch.randn(21, 64, 64, generator=torch.Generator().manual_seed(0)) * 2
    want = segpost.crf_refine(image, logits.numpy())
    labels = segpost.crf_refine(torch.from_numpy(image).permute(2, 0, 1).cuda(), logits.cuda())
    check("crf_refine returns device tensors", labels.is_cuda)
    agreement = float((labels.cpu().numpy() == want).mean())
    check("crf_refine labels vs CPU", agreement >= 0.999, f"{100 * agreement:.3f}% equal")
    again = segpost.crf_refine(torch.from_numpy(image).permute(2, 0, 1).cuda(), logits.cuda())
    check("crf_refine deterministic", bool(torch.equal(labels, again)))
    gpu_image, gpu_logits = torch.from_numpy(image).permute(2, 0, 1).cuda(), logits.cuda()
    segpost.crf_refine(gpu_image, gpu_logits)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(20):
        segpost.crf_refine(gpu_image, gpu_logits)
    torch.cuda.synchronize()
    growth = torch.cuda.memory_allocated() - before
    check("no memory growth over 20 calls", growth <= 0, f"{growth} bytes")

    # nn.DenseCRF gradients: GPU against CPU.
    x = torch.randn(2, 5, 64, 64, generator=torch.Generator().manual_seed(1))
    imgs = torch.from_numpy(np.stack([image[:64, :64], image[100:164, 100:164]])).permute(0, 3, 1, 2)
    grads = []
    for dev in ("cpu", "cuda"):
        crf = DenseCRF(5, iterations=3).to(dev)
        xx = x.to(dev).requires_grad_()
        crf(xx, imgs.to(dev)).square().sum().backward()
        grads.append((xx.grad.cpu(), crf.compatibility.grad.cpu()))
    for name, a, b in zip(("logits", "compatibility"), *grads):
        error = float((a - b).abs().max() / b.abs().max())
        check(f"nn.DenseCRF gradient of the {name} vs CPU", error < 1e-3, f"max relative error {error:.2e}")

    # Timings.
    rows = []
    rows.append(("crf_refine 512x512, 21 labels, 10 it., alone", gpu_time(
        lambda: segpost.crf_refine(gpu_image, gpu_logits)), "<= 10 ms"))
    batch = [(gpu_image, gpu_logits)] * 8
    per_image = gpu_time(lambda: [segpost.crf_refine(i, l) for i, l in batch], repeats=5) / 8
    rows.append(("crf_refine 512x512, per image of 8", per_image, "<= 5 ms"))
    small_image = torch.from_numpy(photo(512)[:240, :320].copy()).permute(2, 0, 1).cuda()
    small_logits = torch.randn(21, 30, 40, device="cuda")
    rows.append(("crf_refine 320x240, 21 labels, 10 it.", gpu_time(
        lambda: segpost.crf_refine(small_image, small_logits)), "published CUDA CRF: 88 ms"))
    crf = DenseCRF(21, iterations=5).cuda()
    big = torch.randn(4, 21, 256, 256, device="cuda")
    big_images = torch.from_numpy(np.stack([image[:256, :256]] * 4)).permute(0, 3, 1, 2).cuda()

    def train_step():
        xx = big.clone().requires_grad_()
        crf(xx, big_images).square().mean().backward()

    rows.append(("nn.DenseCRF fwd+bwd (4, 21, 256, 256)", gpu_time(train_step, repeats=5), ""))
    print("\n| what | median ms | target |\n|---|---|---|")
    for name, seconds, target in rows:
        print(f"| {name} | {1e3 * seconds:.1f} | {target} |")
    if FAILURES:
        sys.exit(f"{len(FAILURES)} check(s) failed: {FAILURES}")


if __name__ == "__main__":
    main()
