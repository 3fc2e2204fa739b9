"""Dense CRF on a CT volume: segpost.DenseCRF against pydensecrf's general DenseCRF, same model, in one process.

A CT-like phantom (``segpost._phantoms.ct_phantom``: body, organ and a 6 mm
lesion in Hounsfield units with 15 HU noise, spacing (3.0, 0.8, 0.8) mm),
64x192x192 voxels and 3 classes by default, and the logits of a simulated 3-D
network at output stride (1, 4, 4), upsampled trilinearly; the unary is
-log(softmax). Both libraries then run the same CRF, 5 mean-field iterations:

- smoothness kernel, sigma 1.5 mm on every axis, Potts compat 1;
- appearance kernel, sigma 5 mm and 10 HU, Potts compat 3;

pydensecrf as its users write it: ``DenseCRF(N, 3)`` with
``create_pairwise_gaussian(sdims, shape)`` and
``create_pairwise_bilateral(sdims, schan, img, chdim=-1)`` (``chdim=-1``
means "no channel axis", not "the last axis"), the bandwidths in voxels
(``sdims = sigma_mm / spacing``); segpost with ``DenseCRF(unary)``,
``add_gaussian(1.5, spacing=)`` and ``add_bilateral(volume, 5.0, 10.0,
spacing=, channel_axis=None)`` in millimetres and HU.

Two segpost rows: its default, where the smoothness kernel on a volume is the
exact Gaussian filtered separably (``method="auto"``), and
``add_gaussian(..., method="lattice")``, pydensecrf's permutohedral
approximation of it. The features are the same numbers; segpost orders the
position features last axis first (x, y, z), pydensecrf first axis first
(z, y, x), and the lattice's approximation depends on that order: given its
features in segpost's order, pydensecrf's labels are segpost's on the lattice
(the last agreement row).

Timings are paired medians (each round runs every contender once, the order
rotating); segpost clears its cache of grid kernels before every call (what
one volume costs). pydensecrf is single-threaded; segpost uses
``segpost.get_num_threads()``.

Run:  python benchmarks/bench_volumes.py [--quick] [--repeats N] [--shape 64x192x192]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table, time_calls  # noqa: E402

import segpost  # noqa: E402
from segpost._phantoms import ct_phantom, simulate_volume_network  # noqa: E402

NUM_CLASSES = 3
ITERATIONS = 5
# The best of a small grid on two 32x128x128 phantoms (smoothness 1.5 or 3 mm, compat 1 or 3; appearance 5 or
# 10 mm, 10 or 20 HU, compat 3 or 5): Dice organ 0.968 -> 0.989, lesion 0.64 -> 0.91. Wider appearance kernels
# (10 mm, 20 HU) wash out the 6 mm lesion (Dice down to 0.42).
SMOOTH_SIGMA_MM, SMOOTH_COMPAT = 1.5, 1.0
APPEARANCE_SIGMA_MM, APPEARANCE_SIGMA_HU, APPEARANCE_COMPAT = 5.0, 10.0, 3.0


def phantom_unary(shape, seed=0):
    """The phantom and the unary -log(softmax) of a simulated network's upsampled logits, (3, D, H, W) float32."""
    phantom = ct_phantom(shape, seed=seed)
    logits = segpost.resize_logits(simulate_volume_network(phantom.labels, NUM_CLASSES, noise=1.2, seed=seed), shape)
    logits = logits - logits.max(axis=0)
    probs = np.exp(logits) / np.exp(logits).sum(axis=0)
    return phantom, -np.log(np.clip(probs, 1e-5, None)).astype(np.float32)


def segpost_labels(phantom, unary, *, iterations=ITERATIONS, method="auto"):
    crf = segpost.DenseCRF(unary)
    crf.add_gaussian(SMOOTH_SIGMA_MM, compat=SMOOTH_COMPAT, spacing=phantom.spacing, method=method)
    crf.add_bilateral(phantom.volume, APPEARANCE_SIGMA_MM, APPEARANCE_SIGMA_HU, compat=APPEARANCE_COMPAT,
                      spacing=phantom.spacing, channel_axis=None)
    return crf.map(iterations)  # labels from the compiled kernel: no (C, D, H, W) marginals to copy and argmax


def pydensecrf_features(phantom, *, segpost_order=False):
    """pydensecrf's (3, N) smoothness and (4, N) appearance features; with ``segpost_order`` the position rows
    reversed to segpost's order (last axis first)."""
    import pydensecrf.utils as utils

    voxels = np.asarray(phantom.spacing)
    smooth = utils.create_pairwise_gaussian(sdims=tuple(SMOOTH_SIGMA_MM / voxels), shape=phantom.volume.shape)
    appearance = utils.create_pairwise_bilateral(sdims=tuple(APPEARANCE_SIGMA_MM / voxels),
                                                 schan=(APPEARANCE_SIGMA_HU,), img=phantom.volume, chdim=-1)
    if segpost_order:
        smooth = smooth[::-1]
        appearance = np.concatenate([appearance[:3][::-1], appearance[3:]])
    return np.ascontiguousarray(smooth), np.ascontiguousarray(appearance)


def pydensecrf_labels(phantom, unary, *, segpost_order=False, iterations=ITERATIONS):
    import pydensecrf.densecrf as dcrf

    shape = phantom.volume.shape
    crf = dcrf.DenseCRF(int(np.prod(shape)), NUM_CLASSES)
    crf.setUnaryEnergy(np.ascontiguousarray(unary.reshape(NUM_CLASSES, -1)))
    smooth, appearance = pydensecrf_features(phantom, segpost_order=segpost_order)
    crf.addPairwiseEnergy(smooth, compat=SMOOTH_COMPAT)
    crf.addPairwiseEnergy(appearance, compat=APPEARANCE_COMPAT)
    return np.argmax(np.array(crf.inference(iterations)), axis=0).reshape(shape)


def dice(pred, truth, c):
    p, t = pred == c, truth == c
    return 2 * np.count_nonzero(p & t) / max(1, np.count_nonzero(p) + np.count_nonzero(t))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="64x192x192", help="DxHxW voxels (default 64x192x192)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a 16x96x96 volume, 3 repeats")
    args = parser.parse_args()
    shape = (16, 96, 96) if args.quick else tuple(int(v) for v in args.shape.split("x"))
    from segpost.crf.model import _grid_lattices

    phantom, unary = phantom_unary(shape)
    ours = segpost_labels(phantom, unary)
    ours_lattice = segpost_labels(phantom, unary, method="lattice")
    theirs = pydensecrf_labels(phantom, unary)
    theirs_ordered = pydensecrf_labels(phantom, unary, segpost_order=True)
    before = unary.argmin(axis=0)

    def cold(method):
        def run():
            _grid_lattices.clear()
            segpost_labels(phantom, unary, method=method)
        return run

    runs = {"pydensecrf": lambda: pydensecrf_labels(phantom, unary),
            "segpost (exact smoothness kernel, the default)": cold("auto"),
            'segpost (method="lattice", as pydensecrf)': cold("lattice")}
    times = {name: t.median for name, t in time_calls(runs, repeats=args.repeats).items()}
    print(f"{'x'.join(map(str, shape))} voxels, spacing {phantom.spacing} mm, {NUM_CLASSES} classes, "
          f"{ITERATIONS} iterations; segpost {segpost.get_num_threads()} threads, pydensecrf 1; "
          f"median of {args.repeats} paired rounds")
    print_table(["", "seconds", "pydensecrf / this"],
                [[name, f"{t:.2f}", f"{times['pydensecrf'] / t:.2f}x"] for name, t in times.items()])
    print()
    print_table(["labels equal", "fraction"],
                [["segpost (default) and pydensecrf", f"{(theirs == ours).mean():.6f}"],
                 ['segpost (default) and segpost (method="lattice")', f"{(ours_lattice == ours).mean():.6f}"],
                 ['segpost (method="lattice") and pydensecrf (its feature order)',
                  f"{(theirs == ours_lattice).mean():.6f}"],
                 ['segpost (method="lattice") and pydensecrf (segpost\'s feature order)',
                  f"{(theirs_ordered == ours_lattice).mean():.6f}"]])
    print()
    print_table(["Dice", "organ", "lesion"],
                [[name, f"{dice(pred, phantom.labels, 1):.4f}", f"{dice(pred, phantom.labels, 2):.4f}"]
                 for name, pred in (("network (upsampled)", before), ("pydensecrf", theirs), ("segpost", ours),
                                    ('segpost (method="lattice")', ours_lattice))])


if __name__ == "__main__":
    main()
