"""The confusion matrix: one fused, parallel pass over any integer label maps."""
from __future__ import annotations

import functools
import numbers
import os
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from .._threads import get_num_threads
from .._validation import is_torch_tensor, native_byte_order, on_device

__all__ = ["confusion_matrix", "ConfusionResult"]

# Below about this many pixels per thread one thread is faster: handing a
# chunk to the pool costs 150-300 us (measured crossover ~1M pixels on a
# 2-core machine; on a busy virtual machine waking the second core can cost
# more than the chunk, see docs/performance.md).
PARALLEL_THRESHOLD = 1 << 20
# Sub-histograms per thread (breaking increment chains) while K*K stays small.
_SUB_HISTOGRAM_BINS = 1 << 16


class ConfusionResult(np.ndarray):
    """A (K, K) int64 confusion matrix (rows = target, columns = prediction), what
    :func:`confusion_matrix` returns for numpy inputs.

    A numpy array in every respect, with one more attribute.

    Attributes
    ----------
    num_invalid : int
        Pixels dropped for labels outside [0, K) with ``on_invalid="ignore"``.
    first_invalid : int or None
        The first of them in scan order (target before prediction), as the
        label reads; None when there is none.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import confusion_matrix
    >>> cm = confusion_matrix(np.array([0, 1, 7]), np.array([0, 1, 1]), 2, on_invalid="ignore")
    >>> cm.tolist(), cm.num_invalid
    ([[1, 0], [0, 1]], 1)
    """

    num_invalid: int = 0
    first_invalid: int | None = None

    def __array_finalize__(self, obj):
        self.num_invalid = getattr(obj, "num_invalid", 0)
        self.first_invalid = getattr(obj, "first_invalid", None)


def _normalise_ignore(ignore_index):
    if ignore_index is None:
        return ()
    if isinstance(ignore_index, (numbers.Integral, np.integer)) and not isinstance(ignore_index, bool):
        return (int(ignore_index),)
    try:
        values = tuple(ignore_index)
    except TypeError:
        raise TypeError(f"ignore_index must be an int or a collection of ints, got {ignore_index!r}") from None
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (numbers.Integral, np.integer)):
            raise TypeError(f"ignore_index must contain ints, got {v!r}")
    return tuple(int(v) for v in values)


def _labels_from(x, name, torch_ok=True):
    """An integer array (numpy) or tensor (torch) of labels; scores are handled by the caller."""
    if is_torch_tensor(x):
        return x
    arr = np.asarray(x)
    if arr.dtype == object:
        raise TypeError(f"{name} must be a numeric array, got objects")
    return native_byte_order(arr)


def _argmax_scores(pred, target_ndim, name="pred"):
    """Scores with one more axis than the target: argmax over the class axis (0 for one image, 1 for a batch)."""
    axis = 0 if pred.ndim == 3 else 1
    if pred.ndim not in (3, 4):
        raise ValueError(f"{name} scores must be (C, H, W) or (B, C, H, W), got shape {tuple(pred.shape)}")
    if pred.shape[axis] == 1:
        # An argmax over one channel labels every pixel 0. Logits threshold at 0, probabilities at 0.5: only the
        # caller knows which these are.
        raise ValueError(
            f"{name} has one class channel (a sigmoid model's binary scores?): pass labels instead, "
            f"(pred > 0) for logits or (pred > 0.5) for probabilities, as integers, squeezing the channel axis")
    return pred.argmax(axis) if is_torch_tensor(pred) else np.argmax(pred, axis=axis)


def prepare_labels(pred, target):
    """Validated (pred, target) label arrays of one shape: scores argmaxed, dtypes checked."""
    pred, target = _labels_from(pred, "pred"), _labels_from(target, "target")
    if is_torch_tensor(pred) != is_torch_tensor(target):
        import torch

        pred = torch.as_tensor(np.asarray(pred)) if not is_torch_tensor(pred) else pred
        target = torch.as_tensor(np.asarray(target)) if not is_torch_tensor(target) else target
        if pred.device != target.device:
            target = target.to(pred.device) if pred.device.type != "cpu" else target
            pred = pred.to(target.device)
    is_float = (lambda a: a.is_floating_point()) if is_torch_tensor(pred) else (lambda a: a.dtype.kind == "f")
    if is_float(target) or (is_torch_tensor(target) and target.is_complex()) or (not is_torch_tensor(target) and target.dtype.kind not in "biu"):
        raise TypeError(f"target must hold integer labels, got dtype {target.dtype}")
    if is_float(pred):
        if pred.ndim == target.ndim + 1:
            pred = _argmax_scores(pred, target.ndim)
        else:
            raise TypeError(
                f"pred is floating-point with shape {tuple(pred.shape)}: pass integer labels, or scores with one more "
                f"(class) axis than the target {tuple(target.shape)}"
            )
    elif not is_torch_tensor(pred) and pred.dtype.kind not in "biu":
        raise TypeError(f"pred must hold integer labels or float scores, got dtype {pred.dtype}")
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    return pred, target


def _check_num_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, (numbers.Integral, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if num_classes > 65536:
        raise ValueError(f"num_classes={num_classes} would need a {num_classes}x{num_classes} matrix; at most 65536")
    return int(num_classes)


def _common_dtype(a, b):
    if a.dtype == b.dtype:
        return a, b
    common = np.promote_types(a.dtype, b.dtype)
    if common.kind != "i" and common.kind != "u":
        common = np.dtype(np.int64)  # uint64 with a signed type: values above 2**63 are invalid labels anyway
    return a.astype(common, copy=False), b.astype(common, copy=False)


_POOL = None


def _pool(threads):
    """A persistent thread pool (the kernels release the GIL)."""
    global _POOL
    if _POOL is None or _POOL._max_workers < threads:
        _POOL = ThreadPoolExecutor(threads, thread_name_prefix="segpost-metrics")
    return _POOL


def _forget_pool_in_child():
    # A fork()ed child (a DataLoader worker, multiprocessing's fork start
    # method) has none of the parent's pool threads, but the executor believes
    # they are idle and would queue work for them forever: start a fresh pool,
    # as the C++ pool does (parallel.cpp).
    global _POOL
    _POOL = None


os.register_at_fork(after_in_child=_forget_pool_in_child)


def _in_chunks(n, count):
    """Run ``count(lo, hi)`` over [0, n) split across the pool's threads; the list of its results."""
    threads = min(get_num_threads(), max(1, n // PARALLEL_THRESHOLD))
    if threads <= 1:
        return [count(0, n)]
    bounds = np.linspace(0, n, threads + 1).astype(np.int64)
    # The calling thread counts the first chunk itself. Handing every chunk to
    # the pool was slower than one thread: an executor starts a new worker only
    # when none is idle, so after the first call both chunks often queued on
    # one worker (uint8 1024x2048: 1.5 ms for two pool chunks, 0.9 ms this way).
    others = []
    try:
        for i in range(1, threads):
            others.append(_pool(threads - 1).submit(count, bounds[i], bounds[i + 1]))
    except RuntimeError:
        # At interpreter exit the executors take no new work before Python joins the threads still running
        # (a non-daemon thread counting then): this thread counts the chunks the pool did not take.
        pass
    try:
        first = count(bounds[0], bounds[1])
        here = [count(bounds[i], bounds[i + 1]) for i in range(1 + len(others), threads)]
    finally:
        wait(others)  # never return (or raise) while a worker still reads the arrays
    return [first, *(future.result() for future in others), *here]


@functools.lru_cache(maxsize=64)
def _lookup_tables(dtype, k, ignore):
    """``confusion_counts_lookup``'s tables for every value an 8- or 16-bit dtype holds.

    Histogram rows: 0..K-1 the classes, K targets outside [0, K) (invalid),
    K+1 ignored targets; columns: 0..K-1 the classes, K invalid predictions.
    Indexed by the value's bit pattern (the unsigned view of the labels).
    """
    values = np.arange(1 << (8 * dtype.itemsize)).astype(f"u{dtype.itemsize}").view(dtype).astype(np.int64)
    column = np.where((values >= 0) & (values < k), values, k)
    row = np.where(np.isin(values, list(ignore)), k + 1, column)
    return (row * (k + 1)).astype(np.uint16), column.astype(np.uint16)


def _counts_by_lookup(pred, target, k, ignore):
    """(matrix, invalid) for 8- and 16-bit labels and small K: the fast path, equal to ``_counts_by_compare``."""
    from ._kernels import confusion_counts_lookup

    target_row, pred_column = _lookup_tables(target.dtype, k, tuple(sorted(set(ignore))))
    bits = np.dtype(f"u{pred.dtype.itemsize}")
    pred, target = pred.view(bits), target.view(bits)
    num_bins = (k + 2) * (k + 1)
    parts = _in_chunks(pred.size, lambda lo, hi: confusion_counts_lookup(pred[lo:hi], target[lo:hi], target_row,
                                                                         pred_column, num_bins))
    hist = np.sum(parts, axis=0).reshape(k + 2, k + 1)
    return np.ascontiguousarray(hist[:k, :k]), int(hist[k].sum() + hist[:k, k].sum())


def _counts_by_compare(pred, target, k, ignore):
    """(matrix, invalid) for any integer dtype and any K: range checks per pixel, ignore values counted apart."""
    from ._kernels import confusion_counts, count_equal

    in_range = [v for v in ignore if 0 <= v < k]
    # Ignore values outside [0, K) that the target's dtype can hold (others never occur).
    info = np.iinfo(target.dtype)
    outside = [target.dtype.type(v) for v in set(ignore) if not 0 <= v < k and info.min <= v <= info.max]
    copies = 4 if (k + 1) ** 2 <= _SUB_HISTOGRAM_BINS else 1

    def count(lo, hi):
        hist = confusion_counts(pred[lo:hi], target[lo:hi], k, copies)
        ignored = sum(int(count_equal(target[lo:hi], v)) for v in outside) if hist[k * (k + 1):].any() else 0
        return hist, ignored

    parts = _in_chunks(pred.size, count)
    hist = np.sum([h for h, _ in parts], axis=0).reshape(k + 1, k + 1)
    ignored_outside = sum(ignored for _, ignored in parts)
    matrix = np.ascontiguousarray(hist[:k, :k])
    bad_pred = hist[:k, k].copy()
    # Ignore values inside [0, K): drop their rows, and their invalid predictions with them.
    for v in in_range:
        matrix[v] = 0
        bad_pred[v] = 0
    return matrix, int(hist[k].sum()) - ignored_outside + int(bad_pred.sum())


def _uses_lookup(dtype, k):
    # The tables' entries are uint16 offsets into a (K+2) x (K+1) histogram.
    return dtype.itemsize <= 2 and (k + 2) * (k + 1) <= 1 << 16


def _numpy_confusion(pred, target, k, ignore):
    from ._kernels import first_invalid

    if pred.dtype == np.bool_:
        pred = pred.view(np.uint8)
    if target.dtype == np.bool_:
        target = target.view(np.uint8)
    pred, target = _common_dtype(np.ascontiguousarray(pred).reshape(-1), np.ascontiguousarray(target).reshape(-1))
    counts = _counts_by_lookup if _uses_lookup(target.dtype, k) else _counts_by_compare
    matrix, invalid = counts(pred, target, k, ignore)
    # (Ignore values beyond int64 match no label the kernel reads as int64.)
    representable = np.array([v for v in ignore if -(2**63) <= v < 2**63], np.int64)
    first_value = int(first_invalid(pred, target, k, representable)) if invalid else None
    if first_value is not None and first_value < 0 and target.dtype == np.uint64:
        first_value += 2**64  # the kernel reads labels as int64
    return matrix, invalid, first_value


def _torch_confusion(pred, target, k, ignore):
    """Confusion on the tensors' device with torch ops (CUDA stays on the GPU)."""
    import torch

    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = torch.ones_like(target, dtype=torch.bool)
    for v in ignore:
        keep &= target != v
    valid = keep & (target >= 0) & (target < k) & (pred >= 0) & (pred < k)
    invalid_mask = keep & ~valid
    invalid = int(invalid_mask.sum())
    first_value = None
    if invalid:
        i = int(torch.nonzero(invalid_mask)[0])
        t = int(target[i])
        first_value = t if not 0 <= t < k else int(pred[i])
    counts = torch.bincount(target[valid] * k + pred[valid], minlength=k * k)
    return counts.reshape(k, k), invalid, first_value


def confusion_matrix(pred, target, num_classes, *, ignore_index=None, on_invalid="raise"):
    """Confusion matrix of a predicted label map against the ground truth.

    Parameters
    ----------
    pred : array_like or torch.Tensor
        Integer labels of any dtype (uint8, uint16, int32, int64, ...), any
        shape matching ``target`` (a batch is just more pixels); or float
        scores with one more axis than ``target``, argmaxed over the class
        axis: axis 0 for one image ((C, H, W) vs (H, W)), axis 1 for a batch
        ((B, C, H, W) vs (B, H, W)).
    target : array_like or torch.Tensor
        Integer ground-truth labels.
    num_classes : int
        K; valid labels are 0 .. K-1.
    ignore_index : int or collection of int, keyword-only, optional
        Target values to leave out (e.g. 255); they may lie inside or outside [0, K).
    on_invalid : {"raise", "ignore"}, keyword-only, default "raise"
        What to do with labels outside [0, K) that are not ignored (in the
        target, or in the prediction at a non-ignored pixel): raise
        ValueError naming how many and the first bad value, or drop those
        pixels and report their number in ``result.num_invalid``.

    Returns
    -------
    cm : (K, K) int64 ndarray (a :class:`ConfusionResult`), or a torch int64
        tensor on the inputs' device for torch inputs. Rows are the target,
        columns the prediction: ``cm[t, p]`` counts pixels of class t
        predicted as p.

    Raises
    ------
    ValueError
        Shape mismatch, bad num_classes or on_invalid, invalid labels with
        ``on_invalid="raise"``.
    TypeError
        Float targets, float predictions without a class axis, bad ignore_index.

    Notes
    -----
    NumPy and CPU torch inputs go through a fused Numba kernel on the native
    dtypes (no widening copy, no mask array; the bounds check drops ignore
    values >= K) with per-thread histograms above ~1M pixels per thread; CUDA tensors
    are counted with torch ops on the GPU. Call :func:`segpost.metrics.warmup` to compile
    the kernels ahead of time.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.metrics import confusion_matrix
    >>> target = np.array([[0, 0, 1], [1, 2, 255]], np.uint8)
    >>> pred = np.array([[0, 1, 1], [1, 2, 0]], np.uint8)
    >>> confusion_matrix(pred, target, 3, ignore_index=255)
    ConfusionResult([[1, 1, 0],
                     [0, 2, 0],
                     [0, 0, 1]])
    """
    k = _check_num_classes(num_classes)
    if on_invalid not in ("raise", "ignore"):
        raise ValueError(f"on_invalid must be 'raise' or 'ignore', got {on_invalid!r}")
    ignore = _normalise_ignore(ignore_index)
    pred, target = prepare_labels(pred, target)
    if on_device(pred):
        out, invalid, first = _torch_confusion(pred, target, k, ignore)
    else:
        arrays = (pred.numpy(), target.numpy()) if is_torch_tensor(pred) else (pred, target)
        matrix, invalid, first = _numpy_confusion(*arrays, k, ignore)
        if is_torch_tensor(pred):
            import torch

            out = torch.from_numpy(matrix)
        else:
            out = matrix.astype(np.int64, copy=False).view(ConfusionResult)
    if invalid and on_invalid == "raise":
        raise ValueError(
            f"{invalid} pixel(s) have labels outside [0, {k}) that are not ignored (first bad value: {first}); "
            f"fix num_classes or ignore_index, or pass on_invalid='ignore' to drop and count them"
        )
    out.num_invalid = invalid  # torch tensors take the attributes too
    out.first_invalid = first
    return out
