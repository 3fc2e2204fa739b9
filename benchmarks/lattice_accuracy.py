"""Measure the lattice's error against the exact O(N^2) Gaussian filter.

Random point sets like those of tests/test_lattice.py (N in 1..300, spreads of
0.01 to 8 bandwidths; uniform, integer-grid and clustered layouts), values
uniform in [-1, 1]. Prints, per feature dimension d, the worst pointwise error
and the worst mean error (for N >= 30) of the normalised filter as fractions of
the value range, plus the median - the numbers behind ERROR_BOUND in the tests
and the accuracy table of docs/performance.md.

Run:  python benchmarks/lattice_accuracy.py [--trials 1500]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table  # noqa: E402
from oracles import exact_gaussian_filter  # noqa: E402

from segpost import PermutohedralLattice  # noqa: E402


def random_point_set(rng, d, layout):
    n = int(rng.integers(1, 301))
    spread = rng.uniform(0.01, 8.0)
    if layout == "uniform":
        features = rng.uniform(0, spread, size=(n, d))
    elif layout == "grid":
        features = np.round(rng.uniform(0, spread, size=(n, d)))
    else:
        centres = rng.uniform(0, spread * 3, size=(3, d))
        features = centres[rng.integers(0, 3, n)] + rng.normal(scale=0.3, size=(n, d))
    return features, rng.uniform(-1, 1, size=(n, 3))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1500, help="point sets per dimension")
    args = parser.parse_args()
    rng = np.random.default_rng(2026)
    rows = []
    for d in range(1, 7):
        worst_max, worst_mean, maxima = 0.0, 0.0, []
        for t in range(args.trials):
            features, values = random_point_set(rng, d, ("uniform", "grid", "clusters")[t % 3])
            value_range = values.max() - values.min()
            if value_range == 0:
                continue
            out = PermutohedralLattice(features).filter(values, normalize=True)
            err = np.abs(out - exact_gaussian_filter(features, values, normalize=True)) / value_range
            worst_max = max(worst_max, err.max())
            maxima.append(err.max())
            if len(features) >= 30:
                worst_mean = max(worst_mean, err.mean())
        rows.append([d, f"{np.median(maxima):.4f}", f"{worst_max:.4f}", f"{worst_mean:.4f}"])
    print(f"normalised lattice filter vs exact Gaussian, error / value range, {args.trials} point sets per d")
    print_table(["d", "median max error", "worst max error", "worst mean error (N >= 30)"], rows)


if __name__ == "__main__":
    main()
