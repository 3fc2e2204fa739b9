"""Measurement helpers shared by ``segpost bench`` and the scripts in benchmarks/."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["Timing", "time_calls", "crf_timings", "metrics_throughput", "photo", "pydensecrf_labels"]


@dataclass(frozen=True)
class Timing:
    """The wall times of one callable's timed calls (see :func:`time_calls`)."""

    times: tuple  #: seconds of each timed call, in the order they ran
    value: object = None  #: what the last call returned (when one callable was timed)

    @property
    def median(self):
        """The median of ``times``, in seconds."""
        return statistics.median(self.times)


def time_calls(fns, *, repeats=5, warmup=1, rotate=True, sync=None):
    """Wall times of calls, after ``warmup`` untimed calls: segpost's one way of timing code.

    Parameters
    ----------
    fns : callable, or dict of name -> callable
        What to time. Several are timed in rounds, each called once per
        round, so that drift of the machine (clock, load on the other cores)
        falls on all of them alike. A value may be a pair ``(setup, fn)``:
        ``setup()`` runs untimed before every call and ``fn`` gets what it
        returned (a fresh model, an emptied output folder).
    repeats : int
        Timed calls of each.
    warmup : int
        Untimed calls of each first (compilation, caches, the page cache).
    rotate : bool
        Round ``r`` starts at the ``r``-th callable (and goes round), so that
        none always runs first; False: the order of ``fns`` every round.
    sync : callable, optional
        Called after every call, inside the timed span:
        ``torch.cuda.synchronize`` for work queued on a GPU.

    Returns
    -------
    Timing, or dict of name -> Timing
        For a callable (with what its last call returned), or for a dict of
        them (in the dict's order).

    Examples
    --------
    >>> import numpy as np
    >>> timing = time_calls(lambda: np.sort(np.arange(1000)), repeats=3)
    >>> len(timing.times), timing.median > 0, timing.value[:3]
    (3, True, array([0, 1, 2]))
    >>> rounds = time_calls({"sort": lambda: sorted(range(100)), "sum": lambda: sum(range(100))}, repeats=2)
    >>> list(rounds), len(rounds["sum"].times)
    (['sort', 'sum'], 2)
    """
    single = callable(fns)
    named = {None: fns} if single else dict(fns)
    calls = {name: fn if isinstance(fn, tuple) else (None, fn) for name, fn in named.items()}
    times = {name: [] for name in calls}
    value = None

    def call(name, timed, keep):
        nonlocal value
        setup, fn = calls[name]
        args = () if setup is None else (setup(),)
        start = time.perf_counter()
        out = fn(*args)
        if sync is not None:
            sync()
        if keep:
            value = out
        # Otherwise freed inside the timed span, as a bare call's result is: a result held over into the next
        # call would change what it measures (segpost's kernels reuse freed buffers).
        del out
        if timed:
            times[name].append(time.perf_counter() - start)

    names = list(calls)
    for w in range(warmup):
        for name in names:
            call(name, False, single and repeats == 0 and w == warmup - 1)
    for r in range(repeats):
        shift = r % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            call(name, True, single and r == repeats - 1)
    if single:
        return Timing(tuple(times[None]), value)
    return {name: Timing(tuple(times[name])) for name in names}


def photo(size):
    from skimage import data
    from skimage.transform import resize

    image = data.astronaut()
    if size != image.shape[0]:
        image = (resize(image, (size, size), order=1, anti_aliasing=False) * 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def pydensecrf_labels(image, logits, params, iterations=None):
    """pydensecrf end to end from the same logits: bilinear upsampling, -log softmax unary, both kernels, argmax."""
    import pydensecrf.densecrf as dcrf

    from .upsample import resize_logits

    h, w = image.shape[:2]
    full = resize_logits(logits, (h, w))
    peak = full.max(axis=0)
    unary = (np.log(np.exp(full - peak).sum(axis=0)) + peak - full).reshape(len(full), -1)
    d = dcrf.DenseCRF2D(w, h, len(full))
    d.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    d.addPairwiseGaussian(sxy=params.pos_xy, compat=params.pos_weight)
    d.addPairwiseBilateral(sxy=params.bi_xy, srgb=params.bi_rgb, rgbim=image, compat=params.bi_weight)
    return np.argmax(d.inference(params.iterations if iterations is None else iterations), axis=0).reshape(h, w)


def crf_timings(*, sizes=(512,), labels=(21,), preset="pydensecrf", iterations=10, repeats=3):
    """Median ms of crf_refine (and of pydensecrf when installed) from stride-8 logits to labels."""
    from .crf import CRFParams, crf_refine

    try:
        import pydensecrf.densecrf  # noqa: F401

        have_reference = True
    except ImportError:
        have_reference = False
    params = CRFParams.coerce(preset).replace(iterations=iterations)
    rows = []
    for size in sizes:
        image = photo(size)
        for n in labels:
            logits = np.random.default_rng(0).normal(scale=2.0, size=(n, size // 8, size // 8)).astype(np.float32)
            ours = time_calls(lambda: crf_refine(image, logits, params=params), repeats=repeats).median
            ref = (time_calls(lambda: pydensecrf_labels(image, logits, params), repeats=repeats).median
                   if have_reference else None)
            rows.append({"size": f"{size}x{size}", "labels": n, "segpost_ms": ours * 1e3,
                         "pydensecrf_ms": None if ref is None else ref * 1e3})
    return rows


def metrics_throughput(*, shape=(1024, 2048), num_classes=19, repeats=5):
    """Mpx/s of segpost.confusion_matrix and of a masked np.bincount, for uint8 and int64 maps."""
    from .metrics import confusion_matrix

    h, w = shape
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, num_classes, size=(h // 16, w // 16))
    target = np.kron(coarse, np.ones((16, 16), np.int64))
    pred = np.where(rng.random((h, w)) < 0.2, rng.integers(0, num_classes, size=(h, w)), target)
    target = np.where(rng.random((h, w)) < 0.1, 255, target)
    rows = []
    for dtype in (np.uint8, np.int64):
        p, t = pred.astype(dtype), target.astype(dtype)

        def bincount():
            keep = t != 255
            return np.bincount(t[keep].astype(np.int64) * num_classes + p[keep], minlength=num_classes**2)

        ours = time_calls(lambda: confusion_matrix(p, t, num_classes, ignore_index=255), repeats=repeats).median
        ref = time_calls(bincount, repeats=repeats).median
        rows.append({"dtype": np.dtype(dtype).name, "segpost_mpx": h * w / ours / 1e6, "bincount_mpx": h * w / ref / 1e6})
    return rows
