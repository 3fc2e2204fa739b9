"""The one prepared device check: segpost's CUDA path against its CPU path, and its timings, on one GPU.

On one H100/H200, from a checkout, with no network (not yet run on a GPU; the
build's time on a 2-core VM is in docs/developers.md, "CUDA"; on a GPU
machine it builds for the visible GPU only)::

    SEGPOST_CUDA=1 pip install --no-build-isolation --no-deps --no-index .
    python benchmarks/gpu_check.py

It prints one line per check and a table of the targets, writes everything
as JSON to ``--json PATH`` (default ``$OUT/gpu_check.json`` when ``$OUT`` is
set), and exits 1 if a check or a target fails, 2 if torch sees no GPU.

What it reports: versions (torch, CUDA, driver, device) and where
``segpost._C_cuda`` was loaded from or why it failed to import; CUDA
against CPU (lattice vertices, filter, adjoint, a batched build and the
chunked splat, the kernels against their CPU emulation
``tests/cuda_emulation.py``, DenseCRF and crf_refine labels >= 99.9% equal,
nn.DenseCRF gradients); bitwise determinism over 3 runs; memory growth over
50 calls and the peak at 4096x4096; the stage times (lattice builds, mean
field iterations); and the targets, pass or fail: crf_refine 512x512, 21
labels, 10 iterations <= 10 ms alone and <= 5 ms per image in a true batch
of 8 (one lattice per kernel for the batch: ``crf_refine`` on a batch when
it takes one, else the same model through the batched ``kernel_filters``);
320x240, 21 labels, 10 iterations against heiwang1997's CUDA CRF (88 ms);
nn.DenseCRF forward + backward (4, 21, 256, 256), reported.

``--no-device`` skips the device work (no GPU needed): versions, the
extension's status and the targets as "not run", for the tests
(tests/test_gpu_check.py).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# name, limit in ms (None: reported, no limit), what the limit is
TARGETS = [
    ("crf_refine 512x512, 21 labels, 10 it., alone", 10.0, "<= 10 ms"),
    ("crf_refine 512x512, 21 labels, 10 it., per image in a batch of 8", 5.0, "<= 5 ms"),
    ("crf_refine 320x240, 21 labels, 10 it.", 88.0, "<= 88 ms (heiwang1997's CUDA CRF)"),
    ("nn.DenseCRF fwd+bwd (4, 21, 256, 256), 5 it.", None, "reported"),
]
ROOT = Path(__file__).resolve().parent.parent
# Sizes of the checks (module constants so that a CPU smoke run can shrink them).
LATTICE_POINTS = 200_000  # the lattice checks' random 5-D points
FLAT_SIZE = 256  # the batched-build check's two images (one flat: long CSR rows, the chunked splat)
PEAK_TILES = 8  # the peak-memory image: the 512x512 photo tiled PEAK_TILES x PEAK_TILES


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the JSON report (default: $OUT/gpu_check.json when $OUT is set)")
    parser.add_argument("--no-device", action="store_true",
                        help="skip the device work: versions, the extension's status and the targets as not run")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per target (median)")
    return parser.parse_args(argv)


def json_path(args, environ=os.environ):
    if args.json is not None:
        return args.json
    return Path(environ["OUT"]) / "gpu_check.json" if environ.get("OUT") else None


def target_rows(timings_ms):
    """The targets with their medians (``timings_ms``: name -> ms, missing: not run) and pass/fail/not run."""
    rows = []
    for name, limit, target in TARGETS:
        ms = timings_ms.get(name)
        status = "not run" if ms is None else "reported" if limit is None else "pass" if ms <= limit else "FAIL"
        rows.append({"name": name, "median_ms": ms, "limit_ms": limit, "target": target, "status": status})
    return rows


def format_table(rows):
    lines = ["| what | median ms | target | result |", "|---|---|---|---|"]
    for row in rows:
        ms = "-" if row["median_ms"] is None else f"{row['median_ms']:.2f}"
        lines.append(f"| {row['name']} | {ms} | {row['target']} | {row['status']} |")
    return "\n".join(lines)


def write_json(report, path):
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"report written to {path}")


def _driver_version():
    import shutil
    import subprocess

    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    try:  # the driver API's version, as an integer 1000 * major + 10 * minor
        import ctypes

        version = ctypes.c_int()
        ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version))
        return f"CUDA driver API {version.value // 1000}.{version.value % 1000 // 10}"
    except OSError:
        return None


def versions(device=True):
    import platform

    import torch

    import segpost

    found = {"python": platform.python_version(), "segpost": segpost.__version__, "segpost_from": segpost.__file__,
             "torch": torch.__version__, "torch_cuda": torch.version.cuda, "numpy": np.__version__}
    if device and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        found.update(device=props.name, capability=f"{props.major}.{props.minor}",
                     device_memory_gib=round(props.total_memory / 2**30, 1), driver=_driver_version(),
                     device_count=torch.cuda.device_count())
    return found


class Checks:
    """Pass/fail checks, printed as they come and kept for the report."""

    def __init__(self):
        self.results = []

    def __call__(self, name, ok, detail="", **values):
        ok = bool(ok)
        print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
        self.results.append({"name": name, "ok": ok, "detail": detail, **values})
        return ok

    def guarded(self, name, fn):
        """Run ``fn(self)``; an exception is one failed check (the others still run)."""
        try:
            fn(self)
        except Exception as exc:  # noqa: BLE001  (report it and go on: one device run must answer everything)
            import traceback

            traceback.print_exc()
            self(name, False, f"raised {type(exc).__name__}: {exc}")

    @property
    def failed(self):
        return [r["name"] for r in self.results if not r["ok"]]


def gpu_time(fn, repeats=10):
    """Median seconds of ``fn`` on the GPU (one untimed warm-up call, a sync after each)."""
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def refine_batch(images, logits, params, iterations):
    """crf_refine's model on a (B, 3, H, W) uint8 batch with (B, C, h, w) logits, as one batch: the features
    as crf_refine's device path builds them, one lattice per kernel for the batch (``kernel_filters`` with
    ``images=B``), one mean field over all rows. (B, H, W) labels."""
    import torch
    import torch.nn.functional as F

    from segpost.crf.mean_field import grid_features, kernel_filters, mean_field

    b, c = logits.shape[:2]
    spatial = tuple(images.shape[-2:])
    scores = F.interpolate(logits.float(), size=spatial, mode="bilinear", align_corners=False)
    rows = scores.permute(0, 2, 3, 1).reshape(-1, c).contiguous()
    per_image = [grid_features(image, params.pos_xy, params.bi_xy, params.bi_rgb) for image in images]
    features = [torch.cat(kernel) for kernel in zip(*per_image)]
    terms = [(w, f) for w, f in zip((params.pos_weight, params.bi_weight), features) if w > 0]
    filters = kernel_filters([f for _, f in terms], images=b)
    with torch.no_grad():
        out = mean_field(rows, filters, [w for w, _ in terms], None, iterations)
    return out.argmax(1).reshape(b, *spatial)


def _crf_refine_takes_a_batch(images, logits):
    import segpost

    try:
        labels = segpost.crf_refine(images, logits)
    except (TypeError, ValueError):
        return False
    return tuple(labels.shape) == (images.shape[0], *images.shape[-2:])


def device_checks(check, report, repeats):
    import torch

    import segpost
    from segpost.benchmarking import photo
    from segpost.lattice.cuda import CudaLattice, cuda_extension
    from segpost.nn import DenseCRF

    ext = cuda_extension()
    if not check("CUDA extension loaded", ext is not None, json.dumps(report["extension"])):
        return
    rng = np.random.default_rng(0)
    params = segpost.CRFParams.deeplab()

    def lattice(check):
        features = rng.uniform(0, 20, size=(LATTICE_POINTS, 5)).astype(np.float32)
        values = rng.normal(size=(LATTICE_POINTS, 21)).astype(np.float32)
        cpu = segpost.PermutohedralLattice(features)
        gpu = CudaLattice(torch.from_numpy(features).cuda(), ext)
        check("vertices", gpu.num_vertices == cpu.num_vertices, f"{gpu.num_vertices} vs {cpu.num_vertices}")
        for adjoint in (False, True):
            got = gpu.filter(torch.from_numpy(values).cuda(), adjoint=adjoint).cpu().numpy()
            want = cpu.filter(values, adjoint=adjoint)
            error = float(np.abs(got - want).max() / np.abs(want).max())
            check(f"filter{' (adjoint)' if adjoint else ''} vs CPU", error < 1e-5, f"max relative error {error:.2e}",
                  error=error)
        runs = [gpu.filter(torch.from_numpy(values).cuda()) for _ in range(3)]
        rebuilt = [CudaLattice(torch.from_numpy(features).cuda(), ext)._parts for _ in range(2)]
        same = all(torch.equal(a, b) for parts in rebuilt for a, b in zip(parts, gpu._parts))
        check("lattice deterministic (3 builds, 3 filters bitwise)", same and all(torch.equal(r, runs[0])
                                                                                 for r in runs))
        empty = ext.build(torch.empty(0, 5, device="cuda"), 0)
        check("empty build filters (0, C) to (0, C)",
              tuple(ext.filter(*empty, torch.empty(0, 3, device="cuda"), None, None, False).shape) == (0, 3))

    def batched(check):
        # A batched build is each image's own lattice; long CSR rows (a flat region under a wide
        # bilateral kernel) go through the chunked splat.
        size = FLAT_SIZE
        flat = np.zeros((2, size, size, 3), np.float32)
        flat[1, :, size // 2:] = 200
        grid = np.stack(np.meshgrid(np.arange(size), np.arange(size)), -1).reshape(-1, 2) / 80.0
        rows_of = [np.concatenate([grid, im.reshape(-1, 3) / 13.0], 1).astype(np.float32) for im in flat]
        both = CudaLattice(torch.from_numpy(np.concatenate(rows_of)).cuda(), ext, images=2)
        alone = [CudaLattice(torch.from_numpy(r).cuda(), ext) for r in rows_of]
        check("batched build = its images' vertices", both.num_vertices == sum(a.num_vertices for a in alone))
        v = torch.from_numpy(rng.normal(size=(2 * size * size, 4)).astype(np.float32)).cuda()
        split = torch.cat([a.filter(part) for a, part in zip(alone, v.chunk(2))])
        check("batched filter = one by one (bitwise)", torch.equal(both.filter(v), split))
        chunks = float((both._parts[3].numel() - 1) / both.num_vertices)
        want = np.concatenate([segpost.PermutohedralLattice(r).filter(part) for r, part in
                               zip(rows_of, v.cpu().numpy().reshape(2, -1, 4))])
        error = float(np.abs(split.cpu().numpy() - want).max() / np.abs(want).max())
        check("chunked splat vs CPU", error < 1e-5, f"max relative error {error:.2e}, {chunks:.2f} chunks/vertex")

    def emulation(check):
        # The kernels against their line-by-line CPU transcription: integers bitwise, floats to
        # rounding (nvcc fuses multiply-adds; the emulation's fused=True does for the elevation).
        sys.path.insert(0, str(ROOT / "tests"))
        try:
            import cuda_emulation
        except ImportError:
            check("kernels vs tests/cuda_emulation.py", True, "skipped: not run from a checkout")
            return
        finally:
            sys.path.pop(0)
        features = rng.uniform(0, 3, size=(300, 5)).astype(np.float32)
        features[150:160] = features[0]
        values = rng.normal(size=(300, 3)).astype(np.float32)
        want = cuda_emulation.build(features, fused=True)
        got = [p.cpu().numpy() for p in ext.build(torch.from_numpy(features).cuda(), 0)]
        integers = all(np.array_equal(g, w) for i, (g, w) in enumerate(zip(got, want)) if i != 1)
        weights = float(np.abs(got[1] - want[1]).max())
        check("kernels' build vs emulation", integers and weights <= 1e-6,
              f"integer parts {'equal' if integers else 'DIFFER'}, weights max difference {weights:.1e}")
        out = ext.filter(*[torch.from_numpy(np.asarray(p)).cuda() for p in _as_binding(want)],
                         torch.from_numpy(values).cuda(), None, None, False).cpu().numpy()
        error = float(np.abs(out - cuda_emulation.filter(*want, values)).max())
        check("kernels' filter vs emulation", error < 1e-5, f"max difference {error:.1e} (fused multiply-adds)")

    def dense_crf(check):
        crop = photo(512)[:128, :128]
        unary = rng.normal(size=(6, 128, 128)).astype(np.float32) * 2
        labels_of = []
        for u in (unary, torch.from_numpy(unary).cuda()):
            model = segpost.DenseCRF(u)
            model.add_gaussian(3, compat=3)
            model.add_bilateral(crop, 60, 10, compat=np.linspace(-6, -2, 6))
            labels_of.append(model.map(5))
        agreement = float((labels_of[1].cpu().numpy() == labels_of[0]).mean())
        check("DenseCRF(cuda unary) labels vs CPU", labels_of[1].is_cuda and agreement >= 0.999,
              f"{100 * agreement:.3f}% equal", agreement=agreement)

    def refine(check):
        image = photo(512)
        logits = torch.randn(21, 64, 64, generator=torch.Generator().manual_seed(0)) * 2
        want = segpost.crf_refine(image, logits.numpy())
        gpu_image, gpu_logits = torch.from_numpy(image).permute(2, 0, 1).cuda(), logits.cuda()
        runs = [segpost.crf_refine(gpu_image, gpu_logits, return_probs=True) for _ in range(3)]
        agreement = float((runs[0][0].cpu().numpy() == want).mean())
        check("crf_refine labels vs CPU", runs[0][0].is_cuda and agreement >= 0.999, f"{100 * agreement:.3f}% equal",
              agreement=agreement)
        check("crf_refine deterministic (labels and probabilities, 3 runs bitwise)",
              all(torch.equal(r[0], runs[0][0]) and torch.equal(r[1], runs[0][1]) for r in runs))

    def gradients(check):
        image = photo(512)
        x = torch.randn(2, 5, 64, 64, generator=torch.Generator().manual_seed(1))
        imgs = torch.from_numpy(np.stack([image[:64, :64], image[100:164, 100:164]])).permute(0, 3, 1, 2)
        grads = []
        for dev in ("cpu", "cuda", "cuda", "cuda"):
            crf = DenseCRF(5, iterations=3).to(dev)
            xx = x.to(dev).requires_grad_()
            crf(xx, imgs.to(dev)).square().sum().backward()
            grads.append((xx.grad.cpu(), crf.compatibility.grad.cpu(), crf.kernel_weights.grad.cpu()))
        for i, name in enumerate(("logits", "compatibility", "kernel weights")):
            error = float((grads[1][i] - grads[0][i]).abs().max() / grads[0][i].abs().max())
            check(f"nn.DenseCRF gradient of the {name} vs CPU", error < 1e-3, f"max relative error {error:.2e}",
                  error=error)
        check("nn.DenseCRF gradients deterministic (3 runs bitwise)",
              all(torch.equal(a, b) for run in grads[2:] for a, b in zip(run, grads[1])))

    def batch(check):
        # A true batch of 8 against crf_refine one by one.
        images = torch.from_numpy(np.stack([photo(512)] * 8)).permute(0, 3, 1, 2).contiguous().cuda()
        batch_logits = torch.randn(8, 21, 64, 64, generator=torch.Generator().manual_seed(2)).cuda() * 2
        one_by_one = torch.stack([segpost.crf_refine(i, l) for i, l in zip(images, batch_logits)])
        agreement = float((refine_batch(images, batch_logits, params, 10) == one_by_one).float().mean())
        check("batched kernel_filters = crf_refine one by one", agreement >= 0.999, f"{100 * agreement:.3f}% equal",
              agreement=agreement)
        report["crf_refine_takes_a_batch"] = _crf_refine_takes_a_batch(images, batch_logits)
        if report["crf_refine_takes_a_batch"]:
            agreement = float((segpost.crf_refine(images, batch_logits) == one_by_one).float().mean())
            check("crf_refine on a batch = one by one", agreement >= 0.999, f"{100 * agreement:.3f}% equal")

    def memory(check):
        image = torch.from_numpy(photo(512)).permute(2, 0, 1).cuda()
        logits = torch.randn(21, 64, 64, device="cuda")
        segpost.crf_refine(image, logits)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        for _ in range(50):
            segpost.crf_refine(image, logits)
        torch.cuda.synchronize()
        growth = torch.cuda.memory_allocated() - before
        report["memory"] = {"growth_bytes_over_50_calls": growth}
        check("no memory growth over 50 crf_refine calls", growth <= 0, f"{growth} bytes")
        side = 512 * PEAK_TILES
        big = torch.from_numpy(np.tile(photo(512), (PEAK_TILES, PEAK_TILES, 1))).permute(2, 0, 1).contiguous().cuda()
        big_logits = torch.randn(21, 64 * PEAK_TILES, 64 * PEAK_TILES, device="cuda")
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        labels = segpost.crf_refine(big, big_logits)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() - base
        report["memory"].update(peak_image=f"{side}x{side}, 21 labels at stride 8", peak_bytes=peak,
                                peak_seconds=seconds)
        check(f"crf_refine {side}x{side}, 21 labels", tuple(labels.shape) == (side, side),
              f"peak {peak / 2**30:.2f} GiB above the inputs, {seconds:.2f} s")

    for name, fn in (("lattice", lattice), ("batched build", batched), ("emulation", emulation),
                     ("DenseCRF", dense_crf), ("crf_refine", refine), ("nn.DenseCRF gradients", gradients),
                     ("batch of 8", batch), ("memory", memory)):
        check.guarded(name, fn)


def _as_binding(parts):
    """The emulation's parts in the binding's dtypes (int32 ids, int64 chunk offsets, float32 weights)."""
    corner_vertex, weights, neighbour, chunk_start, vertex_chunk, csr_corner = parts
    return [corner_vertex.astype(np.int32), weights.astype(np.float32), neighbour.astype(np.int32),
            chunk_start.astype(np.int64), vertex_chunk.astype(np.int64), csr_corner.astype(np.int32)]


def device_timings(check, report, repeats):
    import torch

    import segpost
    from segpost.benchmarking import photo
    from segpost.crf.mean_field import grid_features, kernel_filters, mean_field
    from segpost.nn import DenseCRF

    params = segpost.CRFParams.deeplab()
    timings = {}
    image = torch.from_numpy(photo(512)).permute(2, 0, 1).contiguous().cuda()
    logits = torch.randn(21, 64, 64, generator=torch.Generator().manual_seed(0)).cuda() * 2
    names = [name for name, _, _ in TARGETS]
    timings[names[0]] = 1e3 * gpu_time(lambda: segpost.crf_refine(image, logits), repeats)

    # Stage times of the same call: the two lattice builds (with K 1 for the normalisation), the iterations.
    rows = torch.nn.functional.interpolate(logits[None], size=(512, 512), mode="bilinear")[0]
    rows = rows.reshape(21, -1).T.contiguous()

    def build():
        smooth, appearance = grid_features(image, params.pos_xy, params.bi_xy, params.bi_rgb)
        return kernel_filters([smooth, appearance])

    filters = build()
    weights = [params.pos_weight, params.bi_weight]
    with torch.no_grad():
        report["stages_ms"] = {
            "lattice builds (2 kernels, features, K 1)": 1e3 * gpu_time(build, repeats),
            "mean field, 10 iterations": 1e3 * gpu_time(lambda: mean_field(rows, filters, weights, None, 10), repeats),
            "mean field, 1 iteration": 1e3 * gpu_time(lambda: mean_field(rows, filters, weights, None, 1), repeats),
        }

    images = image[None].repeat(8, 1, 1, 1)
    batch_logits = logits[None].repeat(8, 1, 1, 1)
    if report.get("crf_refine_takes_a_batch"):
        report["batch_path"] = "crf_refine on a (8, 3, 512, 512) batch"
        per_batch = gpu_time(lambda: segpost.crf_refine(images, batch_logits), max(3, repeats // 2))
    else:
        report["batch_path"] = "batched kernel_filters + mean_field (crf_refine's model, one lattice per kernel)"
        per_batch = gpu_time(lambda: refine_batch(images, batch_logits, params, 10), max(3, repeats // 2))
    timings[names[1]] = 1e3 * per_batch / 8
    report["one_by_one_ms_per_image_of_8"] = 1e3 * gpu_time(
        lambda: [segpost.crf_refine(i, l) for i, l in zip(images, batch_logits)], max(3, repeats // 2)) / 8

    small_image = torch.from_numpy(photo(512)[:240, :320].copy()).permute(2, 0, 1).contiguous().cuda()
    small_logits = torch.randn(21, 30, 40, device="cuda")
    timings[names[2]] = 1e3 * gpu_time(lambda: segpost.crf_refine(small_image, small_logits), repeats)

    crf = DenseCRF(21, iterations=5).cuda()
    big = torch.randn(4, 21, 256, 256, device="cuda")
    big_images = image[None, :, :256, :256].repeat(4, 1, 1, 1)

    def train_step():
        xx = big.clone().requires_grad_()
        crf(xx, big_images).square().mean().backward()

    timings[names[3]] = 1e3 * gpu_time(train_step, max(3, repeats // 2))
    return timings


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    import torch

    from segpost.lattice.cuda import cuda_extension_status

    report = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}
    path = json_path(args)
    report["versions"] = versions(device=not args.no_device)
    check = Checks()
    timings = {}
    if args.no_device:
        report["extension"] = {"loaded": False, "how": None, "origin": None, "import_error": None,
                               "error": "not tried (--no-device)"}
        report["note"] = "--no-device: no device work was done"
    elif not torch.cuda.is_available():
        report["error"] = (f"no CUDA device: torch {torch.__version__} (CUDA {torch.version.cuda}) sees none; "
                           f"run this on a GPU machine (or pass --no-device)")
        report["extension"] = None
        report["targets"] = target_rows({})
        report["ok"] = False
        print(report["error"], file=sys.stderr)
        write_json(report, path)
        return 2
    else:
        print(", ".join(f"{k} {v}" for k, v in report["versions"].items()), flush=True)
        report["extension"] = cuda_extension_status()
        ext = report["extension"]
        print(f"segpost._C_cuda: {ext['how']} from {ext['origin']}" if ext["loaded"] else
              f"segpost._C_cuda unavailable: import {ext['import_error']}; {ext['error']}", flush=True)
        device_checks(check, report, args.repeats)
        if report["extension"]["loaded"]:
            try:
                timings = device_timings(check, report, args.repeats)
            except Exception as exc:  # noqa: BLE001  (the checks above are still worth the report)
                import traceback

                traceback.print_exc()
                check("timings", False, f"raised {type(exc).__name__}: {exc}")
    report["checks"] = check.results
    report["targets"] = target_rows(timings)
    report["seconds"] = round(time.perf_counter() - started, 1)
    failed = check.failed + [row["name"] for row in report["targets"] if row["status"] == "FAIL"]
    report["ok"] = not failed and not args.no_device
    print()
    print(format_table(report["targets"]))
    for name, ms in report.get("stages_ms", {}).items():
        print(f"stage: {name}: {ms:.2f} ms")
    print(f"{len(check.results)} checks, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}; "
          f"{report['seconds']} s")
    write_json(report, path)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
