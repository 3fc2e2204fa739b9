"""Private Numba kernels for the metrics. Use the public functions in segpost.metrics."""
import numpy as np

from ._jit import jit

@jit
def confusion_counts(pred, target, k, copies):
    """Fused, branch-free confusion count over flat integer arrays of any dtype.

    Labels outside [0, K) land in an extra row/column K of a (K+1, K+1)
    histogram, so the bounds check costs no branch and doubles as the ignore
    filter for ignore values outside [0, K): row K counts pixels whose target
    is out of range (ignored or invalid; ``count_equal`` tells them apart),
    column K invalid predictions per target class. With ``copies == 4`` four
    interleaved sub-histograms break the store-to-load chains of runs of
    identical pixels (for small K); otherwise one histogram is used.

    Returns the ((K+1) * (K+1),) int64 histogram.
    """
    k1 = k + 1
    hists = np.zeros((4 if copies == 4 else 1, k1 * k1), np.int64)
    n = pred.size
    start = 0
    if copies == 4:
        start = n - n % 4
        for i in range(0, start, 4):
            for j in range(4):  # constant trip count: unrolled
                t = np.int64(target[i + j])
                p = np.int64(pred[i + j])
                ok_t = (t >= 0) & (t < k)
                ok_p = (p >= 0) & (p < k)
                hists[j, (t if ok_t else k) * k1 + (p if ok_p else k)] += 1
    for i in range(start, n):
        t = np.int64(target[i])
        p = np.int64(pred[i])
        ok_t = (t >= 0) & (t < k)
        ok_p = (p >= 0) & (p < k)
        hists[0, (t if ok_t else k) * k1 + (p if ok_p else k)] += 1
    total = hists[0].copy()
    for c in range(1, hists.shape[0]):
        total += hists[c]
    return total


@jit
def count_equal(values, value):
    """Number of entries equal to `value` (of the array's own dtype: the loop vectorises)."""
    count = 0
    for i in range(values.size):
        count += values[i] == value
    return count


@jit
def first_invalid(pred, target, k, ignored):
    """Value of the first invalid label (target first, then prediction), scanning in order; ignored: int64 array."""
    for i in range(pred.size):
        t = np.int64(target[i])
        skip = False
        for v in ignored:
            if t == v:
                skip = True
        if skip:
            continue
        if t < 0 or t >= k:
            return t
        p = np.int64(pred[i])
        if p < 0 or p >= k:
            return p
    return 0
