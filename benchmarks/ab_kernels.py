"""Paired A/B of the compiled mean field of two segpost builds in one process.

Loads the baseline build's extension (``segpost/_C*.so`` under --baseline)
beside this environment's, builds the same lattices and model with each, and
times ``infer`` (10 iterations, labels only) alternately, call by call: a
machine whose speed drifts (a shared VM) moves both sides of each pair
alike. Reports each side's median and the median of the paired ratios, per
case: the two-Potts fast path with wide (21 labels) and narrow (3 labels)
rows, and the generic loop (a matrix compatibility). Bit-identity of the
results is checked too (ab_crf.py checks it on every kernel variant).

Run:  python benchmarks/ab_kernels.py --baseline /tmp/base [--pairs 15]
(SEGPOST_NUM_THREADS=1 for one core: steadier on a shared machine).
"""
import argparse
import glob
import importlib.machinery
import importlib.util
import os
import statistics

import numpy as np

from segpost import _C as current
from segpost.benchmarking import photo, time_calls
from segpost.crf.model import DenseCRF


def load_extension(folder):
    path = glob.glob(os.path.join(folder, "segpost", "_C*.so"))[0]
    # Another package name (the init symbol is the last component's): a module of the same name would be
    # the one already loaded.
    loader = importlib.machinery.ExtensionFileLoader("segpost_baseline._C", path)
    spec = importlib.util.spec_from_file_location("segpost_baseline._C", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def model_on(ext, crf, features):
    """crf's terms on extension `ext`: (model, its lattices), the lattices built there from the same features."""
    model = ext.MeanFieldModel(crf.num_points, crf.num_labels, crf._row_length)
    lattices = []
    for f, (_, (pre, post), _, kind, potts, compat, *_) in zip(features, crf._term_arguments):
        lattices.append(ext.PermutohedralLattice(f, crf._row_length))
        model.add_term(lattices[-1], pre, post, kind, potts, compat)
    return model, lattices


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="folder holding the baseline segpost/_C*.so")
    parser.add_argument("--pairs", type=int, default=15, help="timed call pairs per case")
    args = parser.parse_args()
    baseline = load_extension(args.baseline)
    baseline.set_num_threads(current.get_num_threads())  # SEGPOST_NUM_THREADS reached only this build
    image = photo(512)
    rng = np.random.default_rng(0)
    print(f"baseline {baseline.__file__}\nthis     {current.__file__}")
    for name, labels, potts in (("two Potts, 21 labels (wide rows)", 21, True),
                                ("two Potts, 3 labels (narrow rows)", 3, True),
                                ("matrix compatibility, 21 labels (generic)", 21, False)):
        crf = DenseCRF(rng.normal(size=(labels, 512, 512)).astype(np.float32))
        xy = np.stack(np.meshgrid(np.arange(512), np.arange(512)), -1).reshape(-1, 2).astype(np.float32)
        features = [xy / 3, np.concatenate([xy / 80, image.reshape(-1, 3) / np.float32(13)], 1)]
        crf.add_pairwise(features[0], compat=3.0 if potts else -3 * np.eye(labels))
        crf.add_pairwise(features[1], compat=10.0 if potts else -10 * np.eye(labels))
        sides = [model_on(ext, crf, features) for ext in (baseline, current)]
        results = [model.infer(crf._unary, 10, None, True, True) for model, _ in sides]
        same = all(np.array_equal(a, b) for a, b in zip(*results))
        # Rounds of one call each, the side going first alternating (this build first in round 0).
        timings = time_calls({side: (lambda model=sides[side][0]: model.infer(crf._unary, 10, None, False, True))
                              for side in (1, 0)}, repeats=args.pairs, warmup=0)
        times = (timings[0].times, timings[1].times)
        ratios = [new / old for old, new in zip(*times)]
        print(f"{name:>42}: baseline {1000 * statistics.median(times[0]):.1f} ms, this "
              f"{1000 * statistics.median(times[1]):.1f} ms, paired ratio median {statistics.median(ratios):.3f} "
              f"(IQR {np.percentile(ratios, 25):.3f}-{np.percentile(ratios, 75):.3f}), "
              f"{'bit-identical' if same else 'DIFFER'}")


if __name__ == "__main__":
    main()
