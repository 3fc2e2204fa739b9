"""Brute-force reference implementations the fast kernels are tested against, the reference libraries, and a
fresh interpreter for the tests of crashes and hangs."""
import importlib
import os
import sys

import numpy as np
import pytest


def need(module, extra="test"):
    """Import a reference library, or skip the test; under CI (which installs the test extras) fail instead."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI"):
            raise  # CI installs the test extras: a missing library must fail, not skip
        pytest.skip(f"{module} is not installed (pip install segpost[{extra}])")


def gaussian_affinity(features):
    """Exact (N, N) matrix exp(-|f_i - f_j|^2 / 2), in float64."""
    f = np.asarray(features, np.float64)
    sq = ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1)
    return np.exp(-0.5 * sq)


def exact_gaussian_filter(features, values, *, normalize):
    """O(N^2) Gaussian filter: sum_j k(f_i, f_j) v_j, optionally divided by sum_j k(f_i, f_j)."""
    w = gaussian_affinity(features)
    v = np.asarray(values, np.float64).reshape(len(w), -1)
    out = w @ v
    if normalize:
        out /= w.sum(axis=1, keepdims=True)
    return out.reshape(np.shape(values))


def exact_bilateral_filter(image, sigma_spatial, sigma_color):
    """O((HW)^2) bilateral filter of an (H, W, C) image."""
    img = np.asarray(image, np.float64)
    h, w, c = img.shape
    yy, xx = np.mgrid[0:h, 0:w]
    features = np.concatenate(
        [np.stack([yy.ravel(), xx.ravel()], 1) / sigma_spatial, img.reshape(-1, c) / sigma_color], 1
    )
    return exact_gaussian_filter(features, img.reshape(-1, c), normalize=True).reshape(h, w, c)


def exact_mean_field(unary, terms, iterations):
    """Brute-force mean field of a dense CRF with exact Gaussian kernels, in float64.

    unary: (L, N) energies. terms: list of (features (N, D), compat, normalization)
    with compat a number (Potts w: compat(x) = -w x), an (L,) array (diagonal:
    v * x) or an (L, L) array (matrix, symmetrised). Q starts at softmax(-U) and
    Q <- softmax(-U - sum compat(K Q)), K including each point's own weight.
    """
    unary = np.asarray(unary, np.float64)

    def softmax(x):
        e = np.exp(x - x.max(axis=0, keepdims=True))
        return e / e.sum(axis=0, keepdims=True)

    kernels = []
    for features, compat, normalization in terms:
        k = gaussian_affinity(features)
        norm = k.sum(axis=1)
        if normalization == "symmetric":
            s = 1 / np.sqrt(norm)
            k = s[:, None] * k * s[None, :]
        elif normalization == "before":
            k = k / norm[None, :]
        elif normalization == "after":
            k = k / norm[:, None]
        # "none": the raw kernel sum
        kernels.append((k, compat))

    def messages(q):
        total = np.zeros_like(q)
        for k, compat in kernels:
            filtered = q @ k.T  # (L, N): row l filtered over points
            if np.ndim(compat) == 0:
                total += -float(compat) * filtered
            elif np.ndim(compat) == 1:
                total += np.asarray(compat, np.float64)[:, None] * filtered
            else:
                m = np.asarray(compat, np.float64)
                total += 0.5 * (m + m.T) @ filtered
        return total

    q = softmax(-unary)
    for _ in range(iterations):
        q = softmax(-unary - messages(q))
    return q, messages


def sanitizer_environment():
    """The variables a subprocess with an otherwise empty environment needs under `make sanitize`.

    A sanitised segpost._C loads only into a process whose LD_PRELOAD puts the
    sanitizer runtimes first.
    """
    import os

    return {k: v for k, v in os.environ.items() if k in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}


# Fork, rlimits and signals as on Linux: the subprocess tests of threads, memory and Ctrl-C.
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="fork, rlimits and signals as on Linux")


def run_python(code, timeout=120, env=None):
    """Run ``code`` in a fresh interpreter (-P: the installed segpost); returns the CompletedProcess.

    For tests of crashes and hangs: a crash or a hang in the subprocess fails the test instead of killing the
    test session.
    """
    import subprocess
    import textwrap

    return subprocess.run([sys.executable, "-P", "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=None if env is None else {**os.environ, **env})


def probe(call, error, fragment):
    """One entry of a probe list: ``call()`` works (``error`` None) or raises ``error`` matching ``fragment``."""
    import pytest

    if error is None:
        call()
        return
    with pytest.raises(error, match=fragment):
        call()
