"""Private Numba kernels for the metrics. Use the public functions in segpost.metrics."""
import numpy as np

from ._jit import jit


@jit
def confusion_counts(pred, target, num_classes, ignored_in_range, ignored_outside, copies):
    """Fused confusion count over flat integer arrays of one dtype.

    Returns (hist, invalid, first_bad_index, first_bad_value). hist is
    (copies, K*K) int64: `copies` interleaved sub-histograms break the
    store-to-load chains of runs of identical pixels. The bounds check
    ``0 <= t < K`` doubles as the ignore filter for ignore values outside
    [0, K); `ignored_in_range` (bool, K) marks ignore values inside it and
    `ignored_outside` lists the others.
    """
    k = num_classes
    hist = np.zeros((copies, k * k), np.int64)
    invalid = 0
    first_index = -1
    first_value = 0
    any_in_range = False
    for c in range(k):
        any_in_range |= ignored_in_range[c]
    lane = copies - 1  # copies is a power of two
    n = pred.size
    for i in range(n):
        t = np.int64(target[i])
        if t >= 0 and t < k:
            if any_in_range and ignored_in_range[t]:
                continue
            p = np.int64(pred[i])
            if p >= 0 and p < k:
                hist[i & lane, t * k + p] += 1
            else:
                invalid += 1
                if first_index < 0:
                    first_index = i
                    first_value = p
        else:
            skip = False
            for v in ignored_outside:
                if t == v:
                    skip = True
            if not skip:
                invalid += 1
                if first_index < 0:
                    first_index = i
                    first_value = t
    return hist, invalid, first_index, first_value
