"""Choosing ``CRFParams.ct()``: tune_crf on CT phantoms, then Dice on held-out phantoms.

Phantoms (``segpost._phantoms.ct_phantom``: body, organ, small lesion, in
Hounsfield units with 15 HU noise, spacing (3.0, 0.8, 0.8) mm) and a 3-D
network's logits at output stride (1, 4, 4) (``simulate_volume_network``).
``tune_crf`` searches a grid in millimetres and HU on the tuning phantoms;
the held-out phantoms report Dice per class before (trilinear upsampling
and argmax) and after ``crf_refine`` with the preset and with the best
setting found.

Run:  python benchmarks/tune_volume_crf.py [--shape 32 128 128] [--tune 3] [--held-out 4]
"""
import argparse
import time

import numpy as np

import segpost
from segpost._phantoms import ct_phantom, simulate_volume_network

GRID = {"pos_weight": (1, 3), "bi_weight": (3, 5), "bi_xy": (3, 5, 10, 20), "bi_rgb": (5, 10, 20, 40)}


def cases(seeds, shape):
    for seed in seeds:
        phantom = ct_phantom(shape, seed=seed)
        logits = simulate_volume_network(phantom.labels, 3, stride=(1, 4, 4), seed=seed)
        yield phantom, logits


def softmax(logits):
    e = np.exp(logits - logits.max(0))
    return (e / e.sum(0)).astype(np.float32)


def dice(pred, target, k):
    return [2 * np.sum((pred == c) & (target == c)) / max(np.sum(pred == c) + np.sum(target == c), 1)
            for c in range(1, k)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 128, 128))
    parser.add_argument("--tune", type=int, default=3, help="tuning phantoms (seeds 0..)")
    parser.add_argument("--held-out", type=int, default=4, help="held-out phantoms (seeds 100..)")
    args = parser.parse_args()
    shape = tuple(args.shape)
    tuning = list(cases(range(args.tune), shape))
    spacing = tuning[0][0].spacing
    start = time.perf_counter()
    best, table = segpost.tune_crf([p.volume for p, _ in tuning], [softmax(lg) for _, lg in tuning],
                                   [p.labels for p, _ in tuning], num_classes=3, grid=GRID, metric="mdice",
                                   base=segpost.CRFParams.ct(), spacing=spacing, progress=False)
    print(f"tune_crf over {len(table)} settings on {args.tune} phantoms of {shape} voxels, spacing {spacing} mm: "
          f"{time.perf_counter() - start:.0f} s")
    for row in table[:5]:
        print("  ", row)
    print(f"best: {best}")
    print(f"\nheld-out phantoms (seeds 100..{99 + args.held_out}), Dice organ / lesion:")
    rows = {"no CRF (trilinear + argmax)": [], "CRFParams.ct()": [], "tuned": []}
    for phantom, logits in cases(range(100, 100 + args.held_out), shape):
        rows["no CRF (trilinear + argmax)"].append(
            dice(segpost.upsample_argmax(logits, shape), phantom.labels, 3))
        for name, params in (("CRFParams.ct()", "ct"), ("tuned", best)):
            labels = segpost.crf_refine(phantom.volume, logits, params=params, spacing=phantom.spacing)
            rows[name].append(dice(labels, phantom.labels, 3))
    for name, values in rows.items():
        organ, lesion = np.mean(values, axis=0)
        print(f"  {name:28s} organ {organ:.3f}  lesion {lesion:.3f}")


if __name__ == "__main__":
    main()
