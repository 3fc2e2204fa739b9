"""Confusion-matrix throughput: segpost against np.bincount, torchmetrics and scikit-learn, in one process.

1024x2048 label maps (a Cityscapes frame), 19 classes, 10% ignore (255), as
uint8 and as int64. Prints Mpx/s and the ratio to segpost; also the first-call
compile time and a boundary-metric timing at 1024x2048.

Boundary IoU is timed against the official per-class loop (boundary-iou-api's
``mask_to_boundary`` with OpenCV, whose calls are written out below; scipy's
erosion stands in when OpenCV is not installed: ``pip install
opencv-python-headless`` for the real peer), and both must give the same
intersections and unions.

Run:  python benchmarks/bench_metrics.py
"""
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import median_time, paired_medians, print_table  # noqa: E402

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
    except ImportError:
        pass
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
    ms = {name: 1e3 * t for name, t in paired_medians({"segpost": ours, peer: theirs}, repeats).items()}
    return [[name, f"{t:.0f}", "1.0x" if name == "segpost" else f"{t / ms['segpost']:.1f}x slower"]
            for name, t in ms.items()]


def main():
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
        times = paired_medians(fns, repeats=9)
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
    rows = [
        ["boundary_fscore (tolerance 2)", f"{median_time(lambda: boundary_fscore(pred, target, ignore_index=255), repeats=3) * 1e3:.0f}"],
        ["trimap_metrics (width 5)", f"{median_time(lambda: trimap_metrics(pred, target, K, ignore_index=255), repeats=3) * 1e3:.0f}"],
    ]
    print_table(["metric", "median ms"], rows)


if __name__ == "__main__":
    main()
