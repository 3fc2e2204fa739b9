import subprocess
import sys

import numpy as np
import pytest

import segpost
from oracles import sanitizer_environment


def test_set_and_get_num_threads():
    previous = segpost.get_num_threads()
    try:
        segpost.set_num_threads(3)
        assert segpost.get_num_threads() == 3
    finally:
        segpost.set_num_threads(previous)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError)])
def test_bad_thread_counts_raise(bad, error):
    with pytest.raises(error):
        segpost.set_num_threads(bad)


def _threads_in_subprocess(value):
    code = "import segpost, warnings; print(segpost.get_num_threads())"
    env = {"SEGPOST_NUM_THREADS": value, "PATH": "", **sanitizer_environment()}
    result = subprocess.run([sys.executable, "-P", "-W", "always", "-c", code], capture_output=True, text=True, env=env, check=True)
    return int(result.stdout.strip()), result.stderr


def test_environment_variable_sets_thread_count():
    assert _threads_in_subprocess("1")[0] == 1
    assert _threads_in_subprocess("5")[0] == 5


def test_bad_environment_variable_warns_and_keeps_default():
    n, stderr = _threads_in_subprocess("many")
    assert n >= 1 and "SEGPOST_NUM_THREADS" in stderr


def test_photo_lattice_is_identical_across_thread_counts():
    from skimage import data

    image = data.astronaut().astype(np.float64)
    h, w, _ = image.shape
    yy, xx = np.mgrid[0:h, 0:w]
    features = np.concatenate([np.stack([xx.ravel(), yy.ravel()], 1) / 80, image.reshape(-1, 3) / 13], 1)
    values = np.random.default_rng(0).random((h * w, 4)).astype(np.float32)
    previous = segpost.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            segpost.set_num_threads(n)
            lattice = segpost.PermutohedralLattice(features)
            outs.append((lattice.num_vertices, lattice.filter(values, normalize=True)))
    finally:
        segpost.set_num_threads(previous)
    for vertices, out in outs[1:]:
        assert vertices == outs[0][0]
        np.testing.assert_array_equal(out, outs[0][1])


def _labels_in_child(image, unary, queue):
    crf = segpost.DenseCRF(unary)
    crf.add_bilateral(image, 20, 10, compat=4)
    queue.put(crf.map(3))


def test_thread_pool_survives_fork():
    # The parent's pool threads do not exist in a forked child (a DataLoader
    # worker): the child must build its own pool, not wait on dead threads.
    import multiprocessing

    from skimage import data

    image = data.astronaut()[:200, :200]
    unary = np.random.default_rng(0).normal(size=(4, 200, 200)).astype(np.float32)
    crf = segpost.DenseCRF(unary)
    crf.add_bilateral(image, 20, 10, compat=4)
    expected = crf.map(3)  # the parent's pool is running now
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_labels_in_child, args=(image, unary, queue))
    child.start()
    try:
        labels = queue.get(timeout=60)  # before join: the child exits once its result is read
        child.join(timeout=10)
    finally:
        if child.is_alive():  # hung on the parent's dead threads
            child.kill()
    assert child.exitcode == 0, "the forked child crashed"
    np.testing.assert_array_equal(labels, expected)


def test_parallel_loops_from_several_python_threads():
    # Concurrent callers: one gets the pool, the others fall back to threads
    # of their own; every result is the single-caller one.
    from concurrent.futures import ThreadPoolExecutor

    from skimage import data

    image = data.astronaut()[:160, :180]
    rng = np.random.default_rng(1)
    unaries = [rng.normal(size=(3, 160, 180)).astype(np.float32) for _ in range(6)]

    def labels(unary):
        crf = segpost.DenseCRF(unary)
        crf.add_gaussian(3, compat=3)
        crf.add_bilateral(image, 30, 12, compat=5)
        return crf.map(4)

    expected = [labels(u) for u in unaries]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(labels, unaries))
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)
