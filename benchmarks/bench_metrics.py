"""Confusion-matrix throughput: segpost against np.bincount, torchmetrics and scikit-learn, in one process.

1024x2048 label maps (a Cityscapes frame), 19 classes, 10% ignore (255), as
uint8 and as int64. Prints Mpx/s and the ratio to segpost; also the first-call
compile time and a boundary-metric timing at 1024x2048.

Run:  python benchmarks/bench_metrics.py
"""
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import median_time, print_table  # noqa: E402

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


def main():
    code = "import time, numpy as np; t=time.perf_counter(); from segpost.metrics import warmup; warmup(); print(time.perf_counter()-t)"
    cold = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    print(f"first call (all 8 integer dtypes, from the on-disk cache when present): {cold:.2f} s")
    print(f"confusion matrix, {H}x{W}, {K} classes, 10% ignore, {segpost.get_num_threads()} threads")
    rows = []
    for dtype in (np.uint8, np.int64):
        pred, target = maps(dtype)
        fns = peers(pred, target)
        reference = fns["segpost"]()
        times = {}
        for name, fn in fns.items():
            got = np.asarray(fn())
            assert np.array_equal(got, reference), f"{name} disagrees"
            times[name] = median_time(fn, repeats=7 if name != "sklearn" else 2)
        for name, t in times.items():
            rows.append([np.dtype(dtype).name, name, f"{t * 1e3:.1f}", f"{H * W / t / 1e6:.0f}",
                         "1.0x" if name == "segpost" else f"{t / times['segpost']:.1f}x slower"])
    print_table(["dtype", "implementation", "median ms", "Mpx/s", "vs segpost"], rows)

    pred, target = maps(np.uint8)
    print(f"\nboundary metrics, {H}x{W}, {K} classes")
    rows = [
        ["boundary_iou (d = 2% diagonal)", f"{median_time(lambda: boundary_iou(pred, target, K, ignore_index=255), repeats=3) * 1e3:.0f}"],
        ["boundary_fscore (tolerance 2)", f"{median_time(lambda: boundary_fscore(pred, target, ignore_index=255), repeats=3) * 1e3:.0f}"],
        ["trimap_metrics (width 5)", f"{median_time(lambda: trimap_metrics(pred, target, K, ignore_index=255), repeats=3) * 1e3:.0f}"],
    ]
    print_table(["metric", "median ms"], rows)


if __name__ == "__main__":
    main()
