"""The label-pruning check's Numba kernel (imported, and compiled, only when a check runs)."""
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
