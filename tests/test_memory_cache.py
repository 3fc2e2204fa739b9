"""segpost._memory: the compiled kernels' cache of large freed buffers, and the memory limit."""
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from skimage import data

import segpost
from oracles import linux_only, sanitizer_environment


def _refine():
    image = data.astronaut()[:256, :256]
    logits = np.random.default_rng(0).normal(size=(5, 32, 32)).astype(np.float32)
    return segpost.crf_refine(image, logits, params="pydensecrf", iterations=3, return_probs=True)


def test_freed_buffers_are_cached_reused_and_released():
    segpost.release_cached_memory()
    assert segpost.cached_memory_bytes() == 0
    labels, probs = _refine()
    del labels, probs
    cached = segpost.cached_memory_bytes()
    assert cached >= 2**20  # the lattices' and mean field's buffers came back
    again_labels, again_probs = _refine()  # reused buffers give the same numbers
    np.testing.assert_array_equal(again_labels, _refine()[0])
    segpost.release_cached_memory()
    assert segpost.cached_memory_bytes() == 0


def test_outputs_in_pooled_memory_outlive_the_cache():
    labels, probs = _refine()
    segpost.release_cached_memory()
    expected = probs.copy()
    _refine()  # would overwrite a block that the arrays still used
    np.testing.assert_array_equal(probs, expected)
    assert probs.sum(axis=0) == pytest.approx(1.0, abs=1e-5)


def test_limit_caps_the_cache():
    previous = segpost._C.memory_cache_limit()
    try:
        segpost.set_memory_cache_limit(0)
        _refine()
        assert segpost.cached_memory_bytes() == 0
    finally:
        segpost.set_memory_cache_limit(previous)


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("1", TypeError)])
def test_bad_limits_raise(bad, error):
    with pytest.raises(error):
        segpost.set_memory_cache_limit(bad)


def test_environment_variable_sets_the_limit():
    code = "import segpost; print(segpost._C.memory_cache_limit())"
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True,
                         env={"SEGPOST_MEMORY_CACHE_MB": "64", "PATH": "", **sanitizer_environment()})
    assert int(out.stdout) == 64 * 2**20
    bad = subprocess.run([sys.executable, "-P", "-W", "always", "-c", code], capture_output=True, text=True, check=True,
                         env={"SEGPOST_MEMORY_CACHE_MB": "lots", "PATH": "", **sanitizer_environment()})
    assert "SEGPOST_MEMORY_CACHE_MB" in bad.stderr and int(bad.stdout) == 2**30


# --- the memory limit (SEGPOST_MAX_MEMORY_GB), and allocations that fail ------------------------------------

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8)
LOGITS = RNG.normal(size=(3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("raw, refused", [("inf", False), ("64", False), ("abc", True), ("nan", True), ("-1", True),
                                          ("0", True)])
def test_max_memory_environment_variable(monkeypatch, raw, refused):
    monkeypatch.setenv("SEGPOST_MAX_MEMORY_GB", raw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert segpost.crf_refine(IMAGE, LOGITS).shape == (32, 32)
    assert any("SEGPOST_MAX_MEMORY_GB" in str(w.message) for w in caught) == refused


def test_max_memory_environment_variable_still_limits(monkeypatch):
    monkeypatch.setenv("SEGPOST_MAX_MEMORY_GB", "1e-6")
    with pytest.raises(MemoryError, match="SEGPOST_MAX_MEMORY_GB"):
        segpost.crf_refine(IMAGE, LOGITS)


@pytest.mark.parametrize("call", [
    lambda: segpost.bilateral_filter(IMAGE, 3.0, 10.0),
    lambda: segpost.joint_bilateral_upsample(LOGITS, IMAGE, sigma_spatial=2.0, sigma_color=10.0),
    lambda: segpost.resize_logits(LOGITS, (64, 64)),
])
def test_every_allocating_function_obeys_the_memory_limit(monkeypatch, call):
    monkeypatch.setenv("SEGPOST_MAX_MEMORY_GB", "1e-5")
    with pytest.raises(MemoryError, match="needs about .* GiB, above the limit .* SEGPOST_MAX_MEMORY_GB"):
        call()


@linux_only
@pytest.mark.skipif(bool(os.environ.get("SEGPOST_SANITIZED")),
                    reason="AddressSanitizer reserves terabytes of address space")
def test_memory_error_in_worker_threads_reaches_the_caller():
    # Under an address-space limit (ulimit -v), allocations fail inside the
    # pool's threads too: the caller must get MemoryError, never an abort.
    code = """
        import resource, sys
        import numpy as np
        import segpost

        segpost.set_num_threads(2)
        rng = np.random.default_rng(0)
        features = rng.uniform(0, 200, size=(400_000, 5))
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * resource.getpagesize()
        limit = used + int(sys.argv[1]) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        values = np.ones((400_000, 8), np.float32)
        try:
            lattice = segpost.PermutohedralLattice(features)
            lattice.filter(values)
        except MemoryError as exc:
            print("MemoryError:", exc)
        else:
            print("ok")
    """
    outcomes = set()
    for extra_mib in (40, 80, 120, 160, 200, 260, 330, 420):
        result = subprocess.run([sys.executable, "-P", "-c", textwrap.dedent(code), str(extra_mib)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (extra_mib, result.returncode, result.stderr[-2000:])
        outcomes.add(result.stdout.strip())
    failures = [o for o in outcomes if o.startswith("MemoryError")]
    assert failures  # the limits do bite
    for message in failures:  # never a bare "std::bad_alloc": what failed and what to do
        assert "segpost's compiled kernels could not allocate" in message and "SEGPOST_MAX_MEMORY_GB" in message, message
