"""The demo: real photos laid into a known label map, a simulated network's
coarse output, and what the CRF makes of it. Nothing is downloaded."""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["make_scene", "simulate_network", "run_demo"]

CLASS_NAMES = ["astronaut", "coffee", "cat", "rocket", "grass"]


def _texture(name, size):
    from skimage import data
    from skimage.transform import resize

    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    h, w = size
    if image.shape[0] < h or image.shape[1] < w:
        scale = max(h / image.shape[0], w / image.shape[1])
        image = (resize(image, (int(np.ceil(image.shape[0] * scale)), int(np.ceil(image.shape[1] * scale))),
                        order=1, anti_aliasing=True) * 255).astype(np.uint8)
    return image[:h, :w, :3]


def make_scene(size=(384, 512), seed=0):
    """(image (H, W, 3) uint8, labels (H, W) int64): photo textures in irregular regions.

    Class 0 is the background (astronaut); classes 1..4 are blobs textured with
    coffee, chelsea (the cat), rocket and grass. The label map is exact by
    construction.
    """
    from skimage.draw import polygon

    h, w = size
    rng = np.random.default_rng(seed)
    labels = np.zeros(size, np.int64)
    for label in range(1, len(CLASS_NAMES)):
        for _ in range(2):
            cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
            angles = np.sort(rng.uniform(0, 2 * np.pi, 14))
            radius = rng.uniform(0.08, 0.2) * min(h, w) * rng.uniform(0.6, 1.4, 14)
            rr, cc = polygon(cy + radius * np.sin(angles), cx + radius * np.cos(angles), shape=size)
            labels[rr, cc] = label
    names = ["astronaut", "coffee", "chelsea", "rocket", "grass"]
    image = np.zeros((h, w, 3), np.uint8)
    for label, name in enumerate(names):
        mask = labels == label
        image[mask] = _texture(name, size)[mask]
    return image, labels


def simulate_network(labels, num_classes, *, stride=8, noise=0.8, seed=0):
    """Coarse (C, H/stride, W/stride) logits like a segmentation network's: blurry at edges, noisy."""
    h, w = labels.shape
    hs, ws = -(-h // stride), -(-w // stride)
    onehot = np.zeros((num_classes, hs * stride, ws * stride), np.float32)
    padded = np.pad(labels, ((0, hs * stride - h), (0, ws * stride - w)), mode="edge")
    for c in range(num_classes):
        onehot[c] = padded == c
    coarse = onehot.reshape(num_classes, hs, stride, ws, stride).mean(axis=(2, 4))
    rng = np.random.default_rng(seed)
    return (4.0 * coarse + rng.normal(scale=noise, size=coarse.shape)).astype(np.float32)


def run_demo(out_dir="demo_out", *, size=(384, 512), params="deeplab", progress=print):
    """Run the demo, write its pictures to ``out_dir`` and return the before/after numbers."""
    from skimage import io

    from . import crf_refine, get_num_threads
    from .benchmarking import time_calls
    from .metrics import SegMetrics, boundary_fscore, trimap_metrics
    from .upsample import resize_logits
    from .viz import colorize, side_by_side

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    k = len(CLASS_NAMES)
    progress("[1/4] building a scene from scikit-image photos (exact ground truth) ...")
    image, truth = make_scene(size)
    progress("[2/4] simulating a network's output at stride 8 and upsampling it ...")
    logits = simulate_network(truth, k)
    coarse = resize_logits(logits, truth.shape).argmax(axis=0)
    progress(f"[3/4] refining with the dense CRF ({get_num_threads()} threads) ...")
    timing = time_calls(lambda: crf_refine(image, logits, params=params), repeats=1, warmup=0)
    refined, elapsed = timing.value, timing.median
    progress("[4/4] scoring and writing pictures ...")
    rows = {}
    for name, pred in (("coarse (upsampled)", coarse), ("CRF-refined", refined)):
        metrics = SegMetrics(k, class_names=CLASS_NAMES)
        metrics.update(pred, truth)
        rows[name] = {
            "miou": metrics.compute().miou,
            "boundary_f": boundary_fscore(pred, truth, tolerance=2).fscore,
            "trimap_acc": trimap_metrics(pred, truth, k, width=5).accuracy,
        }
    io.imsave(out / "input.png", image, check_contrast=False)
    io.imsave(out / "ground_truth.png", colorize(truth), check_contrast=False)
    io.imsave(out / "coarse.png", colorize(coarse), check_contrast=False)
    io.imsave(out / "refined.png", colorize(refined), check_contrast=False)
    fig = side_by_side(
        [image, colorize(truth), colorize(coarse), colorize(refined)],
        ["input", "ground truth", f"coarse: mIoU {100 * rows['coarse (upsampled)']['miou']:.1f}",
         f"CRF: mIoU {100 * rows['CRF-refined']['miou']:.1f}"],
        errors=[None, None, coarse != truth, refined != truth],
        path=out / "demo.png",
        suptitle="segpost demo: errors in red",
    )
    import matplotlib.pyplot as plt

    plt.close(fig)
    return rows, elapsed, out
