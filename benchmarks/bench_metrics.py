"""Confusion-matrix throughput: segpost against np.bincount, torchmetrics and scikit-learn, in one process.

1024x2048 label maps (a Cityscapes frame), 19 classes, 10% ignore (255), as
uint8 and as int64. Prints Mpx/s and the ratio to segpost; also the first-call
compile time and a boundary-metric timing at 1024x2048.

Boundary IoU is timed against the official per-class loop (boundary-iou-api's
``mask_to_boundary`` with OpenCV, whose calls are written out below; scipy's
erosion stands in when OpenCV is not installed: ``pip install
opencv-python-headless`` for the real peer), and both must give the same
intersections and unions.

Surface-distance metrics (HD95, ASSD, NSD) are timed against MONAI's CPU path
(``monai.metrics.compute_*`` on one-hot tensors made beforehand, outside the
timing) on a 96x160x160 CT-like volume with two organs and on a 2-D map, both
libraries on 2 threads, and must agree to float32 rounding (MONAI's).

Run:  python benchmarks/bench_metrics.py            (everything)
      python benchmarks/bench_metrics.py surface    (the surface metrics only)
"""
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table, time_calls  # noqa: E402

import segpost  # noqa: E402
from segpost.metrics import boundary_fscore, boundary_iou, confusion_matrix, trimap_metrics  # noqa: E402

H, W, K = 1024, 2048, 19


def maps(dtype):
    rng = np.random.default_rng(0)
    # blocky maps like real predictions: runs of equal labels, 20% disagreement
    coarse = rng.integers(0, K, size=(H // 16, W // 16))
    target = np.kron(coarse, np.ones((16, 16), np.int64))
    pred = np.where(rng.random((H, W)) < 0.2, rng.integers(0, K, size=(H, W)), target)
    target = np.where(rng.random((H, W)) < 0.1, 255, target)
    return pred.astype(dtype), target.astype(dtype)


def peers(pred, target):
    def bincount():
        keep = target != 255
        return np.bincount(target[keep].astype(np.int64) * K + pred[keep], minlength=K * K).reshape(K, K)

    out = {"segpost": lambda: confusion_matrix(pred, target, K, ignore_index=255), "np.bincount (masked)": bincount}
    try:
        import torch
        from torchmetrics.classification import MulticlassConfusionMatrix

        metric = MulticlassConfusionMatrix(num_classes=K, ignore_index=255)
        tp, tt = torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(target.astype(np.int64))
        out["torchmetrics"] = lambda: metric(tp, tt)
    except (ImportError, RuntimeError) as exc:  # RuntimeError: a torchvision whose C ops do not load (it imports it)
        print(f"torchmetrics left out: {exc}", file=sys.stderr)
    try:
        from sklearn.metrics import confusion_matrix as sk

        def sklearn():
            keep = target != 255
            return sk(target[keep], pred[keep], labels=np.arange(K))

        out["sklearn"] = sklearn
    except ImportError:
        pass
    return out


def official_boundary_counts(pred, target, k, dilation_ratio=0.02):
    """Per-class band intersections and unions by the official algorithm, one class at a time."""
    try:
        import cv2

        def erode(padded, d):
            return cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)
    except ImportError:
        from scipy import ndimage

        def erode(padded, d):
            return ndimage.binary_erosion(padded, np.ones((3, 3)), iterations=d, border_value=0).astype(np.uint8)

    h, w = target.shape
    d = max(1, int(round(dilation_ratio * np.sqrt(h**2 + w**2))))

    def mask_to_boundary(mask):
        padded = np.pad(mask, 1)  # cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
        return mask - erode(padded, d)[1:h + 1, 1:w + 1]

    inter, union = np.zeros(k, np.int64), np.zeros(k, np.int64)
    for c in range(k):
        g, p = mask_to_boundary((target == c).astype(np.uint8)), mask_to_boundary((pred == c).astype(np.uint8))
        inter[c], union[c] = np.count_nonzero(g & p), np.count_nonzero(g | p)
    return inter, union


def compare_boundary_iou(pred, target, repeats=5):
    """segpost.metrics.boundary_iou and the official loop, timed alternately; returns the table rows."""
    try:
        import cv2  # noqa: F401

        peer = "official loop (OpenCV)"
    except ImportError:
        peer = "official loop (scipy erosion; OpenCV absent)"

    def ours():
        result = boundary_iou(pred, target, K)
        return result.intersection, result.union

    def theirs():
        return official_boundary_counts(pred, target, K)

    for a, b in zip(ours(), theirs()):
        assert np.array_equal(a, b), "boundary_iou disagrees with the official algorithm"
    ms = {name: 1e3 * t.median for name, t in time_calls({"segpost": ours, peer: theirs}, repeats=repeats,
                                                         warmup=0).items()}
    return [[name, f"{t:.0f}", "1.0x" if name == "segpost" else f"{t / ms['segpost']:.1f}x slower"]
            for name, t in ms.items()]


def organs(shape=(96, 160, 160), shift=0.0, scale=1.0):
    """A CT-like label volume: background and two ellipsoidal organs (classes 1 and 2)."""
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    labels = np.zeros(shape, np.uint8)
    labels[((z - 40 - shift) / 22) ** 2 + ((y - 60) / 35 * scale) ** 2 + ((x - 60) / 30) ** 2 <= 1] = 1
    labels[((z - 55) / 25) ** 2 + ((y - 105 + shift) / 30) ** 2 + ((x - 105) / 38 * scale) ** 2 <= 1] = 2
    return labels


def surface_cases():
    """(name, pred, target, num_classes, spacing): a volume with and without false-positive islands, a 2-D map."""
    rng = np.random.default_rng(0)
    target = organs()
    smooth = organs(shift=2, scale=1.05)  # the organs shifted by 2 slices and 5% smaller along one axis
    islands = smooth.copy()
    spots = rng.random(islands.shape) < 0.0005  # ~1200 scattered voxels of a random class
    islands[spots] = rng.integers(0, 3, int(spots.sum()))
    yy, xx = np.mgrid[:512, :512]
    target2d = ((yy // 128 + xx // 128) % 4).astype(np.uint8)  # 4 classes in 128-pixel tiles
    pred2d = np.roll(target2d, (3, -2), axis=(0, 1))
    pred2d[rng.random(pred2d.shape) < 0.001] = 1
    return [("96x160x160, 3 classes, islands", islands, target, 3, (2.0, 0.8, 0.8)),
            ("96x160x160, 3 classes, smooth", smooth, target, 3, (2.0, 0.8, 0.8)),
            ("512x512, 4 classes, islands", pred2d, target2d, 4, (0.7, 0.7))]


def compare_surface_metrics(repeats=7):
    """segpost's surface metrics and MONAI's CPU path on the same cases, paired; returns table rows."""
    import warnings

    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    from segpost.metrics import average_surface_distance, hausdorff_distance, surface_dice

    torch.set_num_threads(2)
    segpost.set_num_threads(2)
    rows = []
    for name, pred, target, k, spacing in surface_cases():
        one_hot = [torch.from_numpy(np.stack([m == c for c in range(k)])[None]) for m in (pred, target)]
        metrics = {  # (ours, MONAI's), background left out as MONAI's include_background=False
            "HD95": (lambda: hausdorff_distance(pred, target, k, percentile=95, spacing=spacing,
                                                exclude_classes=(0,)).distance[1:],
                     lambda: compute_hausdorff_distance(*one_hot, percentile=95, spacing=list(spacing))[0]),
            "ASSD": (lambda: average_surface_distance(pred, target, k, spacing=spacing,
                                                      exclude_classes=(0,)).distance[1:],
                     lambda: compute_average_surface_distance(*one_hot, symmetric=True, spacing=list(spacing))[0]),
            "NSD 1 mm": (lambda: surface_dice(pred, target, k, tolerance=1.0, spacing=spacing,
                                              exclude_classes=(0,)).dice[1:],
                         lambda: compute_surface_dice(*one_hot, [1.0] * (k - 1), spacing=list(spacing))[0]),
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for metric, (ours, theirs) in metrics.items():
                np.testing.assert_allclose(ours(), theirs().numpy(), rtol=1e-5, err_msg=f"{metric} {name}")
                t = {name: t.median for name, t in time_calls({"segpost": ours, "MONAI": theirs}, repeats=repeats,
                                                               warmup=0).items()}
                rows.append([name, metric, f"{t['segpost'] * 1e3:.1f}", f"{t['MONAI'] * 1e3:.0f}",
                             f"{t['MONAI'] / t['segpost']:.1f}x"])
    return rows


def main_surface():
    import platform

    print(f"\nsurface metrics against MONAI's CPU path, 2 threads each (torch and segpost), paired rounds "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)")
    print_table(["case", "metric", "segpost ms", "MONAI ms", "speed-up"], compare_surface_metrics())


def main():
    if sys.argv[1:] == ["surface"]:
        return main_surface()
    # Timed inline, not with time_calls: the clock must start before segpost is imported (the import is the cost).
    code = "import time, numpy as np; t=time.perf_counter(); from segpost.metrics import warmup; warmup(); print(time.perf_counter()-t)"
    cold = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    print(f"first call (all 8 integer dtypes, from the on-disk cache when present): {cold:.2f} s")
    print(f"confusion matrix, {H}x{W}, {K} classes, 10% ignore, {segpost.get_num_threads()} threads (paired rounds)")
    rows = []
    for dtype in (np.uint8, np.int64):
        pred, target = maps(dtype)
        fns = peers(pred, target)
        reference = fns["segpost"]()
        for name, fn in fns.items():
            assert np.array_equal(np.asarray(fn()), reference), f"{name} disagrees"
        times = {name: t.median for name, t in time_calls(fns, repeats=9, warmup=0).items()}
        for name, t in times.items():
            rows.append([np.dtype(dtype).name, name, f"{t * 1e3:.1f}", f"{H * W / t / 1e6:.0f}",
                         "1.0x" if name == "segpost" else f"{t / times['segpost']:.1f}x slower"])
    print_table(["dtype", "implementation", "median ms", "Mpx/s", "vs segpost"], rows)

    pred, target = maps(np.uint8)
    target = np.where(target == 255, pred, target)  # the official code has no ignore label
    print(f"\nBoundary IoU, {H}x{W}, {K} classes, d = 2% of the diagonal (paired, same counts)")
    print_table(["implementation", "median ms", "vs segpost"], compare_boundary_iou(pred, target))
    pred, target = maps(np.uint8)
    print(f"\nboundary metrics, {H}x{W}, {K} classes")
    fscore = time_calls(lambda: boundary_fscore(pred, target, ignore_index=255), repeats=3).median
    trimap = time_calls(lambda: trimap_metrics(pred, target, K, ignore_index=255), repeats=3).median
    rows = [
        ["boundary_fscore (tolerance 2)", f"{fscore * 1e3:.0f}"],
        ["trimap_metrics (width 5)", f"{trimap * 1e3:.0f}"],
    ]
    print_table(["metric", "median ms"], rows)
    main_surface()


if __name__ == "__main__":
    main()
