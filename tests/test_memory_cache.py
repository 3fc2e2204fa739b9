"""The compiled kernels' cache of large freed buffers (segpost._memory)."""
import subprocess
import sys

import numpy as np
import pytest
from skimage import data

import segpost
from oracles import sanitizer_environment


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
