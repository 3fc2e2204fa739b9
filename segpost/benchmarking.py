"""Measurement helpers shared by ``segpost bench`` and the scripts in benchmarks/."""
from __future__ import annotations

import statistics
import time

import numpy as np

__all__ = ["median_time", "crf_timings", "metrics_throughput", "photo", "pydensecrf_labels"]


def median_time(fn, *, repeats=5, warmup=1):
    """Median wall time of fn() in seconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def photo(size):
    from skimage import data
    from skimage.transform import resize

    image = data.astronaut()
    if size != image.shape[0]:
        image = (resize(image, (size, size), order=1, anti_aliasing=False) * 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def pydensecrf_labels(image, logits, params, iterations=None):
    """pydensecrf end to end from the same logits: bilinear upsampling, -log softmax unary, both kernels, argmax."""
    import pydensecrf.densecrf as dcrf

    from .upsample import resize_logits

    h, w = image.shape[:2]
    full = resize_logits(logits, (h, w))
    peak = full.max(axis=0)
    unary = (np.log(np.exp(full - peak).sum(axis=0)) + peak - full).reshape(len(full), -1)
    d = dcrf.DenseCRF2D(w, h, len(full))
    d.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    d.addPairwiseGaussian(sxy=params.pos_xy, compat=params.pos_weight)
    d.addPairwiseBilateral(sxy=params.bi_xy, srgb=params.bi_rgb, rgbim=image, compat=params.bi_weight)
    return np.argmax(d.inference(params.iterations if iterations is None else iterations), axis=0).reshape(h, w)


def crf_timings(*, sizes=(512,), labels=(21,), preset="pydensecrf", iterations=10, repeats=3):
    """Median ms of crf_refine (and of pydensecrf when installed) from stride-8 logits to labels."""
    from .crf import CRFParams, crf_refine

    try:
        import pydensecrf.densecrf  # noqa: F401

        have_reference = True
    except ImportError:
        have_reference = False
    params = CRFParams.coerce(preset).replace(iterations=iterations)
    rows = []
    for size in sizes:
        image = photo(size)
        for n in labels:
            logits = np.random.default_rng(0).normal(scale=2.0, size=(n, size // 8, size // 8)).astype(np.float32)
            ours = median_time(lambda: crf_refine(image, logits, params=params), repeats=repeats)
            ref = median_time(lambda: pydensecrf_labels(image, logits, params), repeats=repeats) if have_reference else None
            rows.append({"size": f"{size}x{size}", "labels": n, "segpost_ms": ours * 1e3,
                         "pydensecrf_ms": None if ref is None else ref * 1e3})
    return rows


def metrics_throughput(*, shape=(1024, 2048), num_classes=19, repeats=5):
    """Mpx/s of segpost.confusion_matrix and of a masked np.bincount, for uint8 and int64 maps."""
    from .metrics import confusion_matrix

    h, w = shape
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, num_classes, size=(h // 16, w // 16))
    target = np.kron(coarse, np.ones((16, 16), np.int64))
    pred = np.where(rng.random((h, w)) < 0.2, rng.integers(0, num_classes, size=(h, w)), target)
    target = np.where(rng.random((h, w)) < 0.1, 255, target)
    rows = []
    for dtype in (np.uint8, np.int64):
        p, t = pred.astype(dtype), target.astype(dtype)

        def bincount():
            keep = t != 255
            return np.bincount(t[keep].astype(np.int64) * num_classes + p[keep], minlength=num_classes**2)

        ours = median_time(lambda: confusion_matrix(p, t, num_classes, ignore_index=255), repeats=repeats)
        ref = median_time(bincount, repeats=repeats)
        rows.append({"dtype": np.dtype(dtype).name, "segpost_mpx": h * w / ours / 1e6, "bincount_mpx": h * w / ref / 1e6})
    return rows
