"""The label-pruning check's Numba kernels (imported, and compiled, only when a check runs)."""
import numpy as np

from ..metrics._jit import jit


@jit
def min_gaps(unary, num_labels):
    """(L,) float64: for each label, its smallest gap ``U_i(l) - min_l' U_i(l')`` over all points i."""
    gaps = np.full(num_labels, np.inf)
    for i in range(unary.shape[0]):
        best = unary[i, 0]
        for label in range(1, num_labels):
            best = min(best, unary[i, label])
        for label in range(num_labels):
            gap = np.float64(unary[i, label]) - np.float64(best)
            if gap < gaps[label]:
                gaps[label] = gap
    return gaps


@jit
def max_pruned_mass(unary, num_labels, pruned, lift):
    """The largest, over points i, of ``sum_l exp(-gap_i(l) + lift[l])`` over the labels ``pruned``: a bound
    on their summed marginal at any point when ``lift[l] = B q*(l)`` (pruning.py)."""
    largest = 0.0
    for i in range(unary.shape[0]):
        best = unary[i, 0]
        for label in range(1, num_labels):
            best = min(best, unary[i, label])
        total = 0.0
        for j in range(pruned.size):
            total += np.exp(np.float64(best) - np.float64(unary[i, pruned[j]]) + lift[j])
        largest = max(largest, total)
    return largest
