"""Measures the DenseCRF-vs-exact-mean-field differences behind BOUNDS in test_crf.py.

Draws random problems the way test_crf.crf_problems does (photo crops of 3x3
to 12x12, 2-4 labels, any compatibility and normalisation), with half of the
weights at the strategy's maximum, where the differences are largest, and
prints per kernel the distribution of each example's largest and mean
absolute difference. A measurement, not a test: it draws from the tests'
own oracle and problem builder (tests/oracles.py, tests/test_crf.py).

Run:  python benchmarks/measure_crf_bounds.py [--examples 20000] [--seed 0]
"""
import argparse
import os
import sys

import numpy as np
from skimage import data

# The oracle and the problem builder are the tests': the bounds measured are the bounds they check.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from oracles import exact_mean_field  # noqa: E402
from test_crf import _build, random_compat  # noqa: E402


def draw_problem(rng, max_weight, photo):
    h, w = rng.integers(3, 13, size=2)
    labels = int(rng.integers(2, 5))
    unary = rng.normal(scale=rng.uniform(0.1, 2.0), size=(labels, h, w)).astype(np.float32)
    weight = max_weight if rng.random() < 0.5 else rng.uniform(0, max_weight)
    compat = random_compat(str(rng.choice(["potts", "diag", "matrix"])), float(weight), labels, rng)
    normalization = str(rng.choice(["symmetric", "before", "after"]))
    term = str(rng.choice(["gaussian", "bilateral", "both"]))
    y0, x0 = rng.integers(0, 401, size=2)
    return unary, compat, normalization, term, photo[y0 : y0 + h, x0 : x0 + w]


def differences(problem, converged):
    unary, term = problem[0], problem[3]
    crf, exact_terms = _build(*problem)
    labels = unary.shape[0]
    flat = unary.reshape(labels, -1)
    if converged:
        ours = crf.inference(10).reshape(labels, -1)
        expected, _ = exact_mean_field(flat, exact_terms, 10)
    else:
        q0 = np.random.default_rng(0).dirichlet(np.ones(labels), size=flat.shape[1]).T.astype(np.float32)
        ours = crf.step(q0.reshape(unary.shape)).reshape(labels, -1)
        _, messages = exact_mean_field(flat, exact_terms, 0)
        expected = np.exp(-flat - messages(q0.astype(np.float64)))
        expected /= expected.sum(axis=0)
    diff = np.abs(ours - expected)
    return term, float(diff.max()), float(diff.mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    photo = data.astronaut()
    rng = np.random.default_rng(args.seed)
    # The tests' settings: one step with weights up to 3, converged up to 1.5.
    for name, max_weight, converged in (("one step", 3.0, False), ("converged", 1.5, True)):
        rows = [differences(draw_problem(rng, max_weight, photo), converged) for _ in range(args.examples)]
        print(f"{name} (weights up to {max_weight}), {args.examples} examples")
        for term in ("gaussian", "bilateral", "both"):
            largest = np.array([r[1] for r in rows if r[0] == term])
            mean = np.array([r[2] for r in rows if r[0] == term])
            print(f"  {term:9s} n={len(largest):5d}  largest difference: p99 {np.percentile(largest, 99):.3f} "
                  f"max {largest.max():.3f}   mean difference: p99 {np.percentile(mean, 99):.4f} max {mean.max():.4f}")


if __name__ == "__main__":
    main()
