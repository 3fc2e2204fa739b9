import subprocess
import sys

import numpy as np
import pytest

import segpost
from oracles import linux_only, run_python, sanitizer_environment


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


# --- threads, fork and interpreter exit, each in a fresh interpreter (a crash or hang fails the test) -------

@linux_only
def test_confusion_matrix_in_a_forked_child_after_a_parallel_call():
    # The parent's metrics thread pool does not exist in a fork()ed child
    # (DataLoader workers, multiprocessing's fork start method).
    result = run_python("""
        import multiprocessing as mp
        import numpy as np
        import segpost

        segpost.set_num_threads(2)
        rng = np.random.default_rng(0)
        pred, target = rng.integers(0, 5, (2, 4_000_000), dtype=np.uint8)
        expected = segpost.confusion_matrix(pred, target, 5)  # 4 Mpixel: scored on the thread pool

        def child(queue):
            queue.put(segpost.confusion_matrix(pred, target, 5))

        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        process = ctx.Process(target=child, args=(queue,))
        process.start()
        got = queue.get(timeout=30)
        process.join(timeout=60)
        assert process.exitcode == 0, process.exitcode
        assert np.array_equal(got, expected)
        print("ok")
    """)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@linux_only
def test_daemon_thread_inside_a_crf_call_at_interpreter_exit():
    # The main thread exits while a daemon thread is in the mean field: the
    # process must exit normally (it aborted when the thread took the GIL back).
    result = run_python("""
        import threading, time
        import numpy as np
        import segpost

        image = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
        logits = np.random.default_rng(1).normal(size=(5, 32, 32)).astype(np.float32)
        started = threading.Event()

        def work():
            started.set()
            while True:
                segpost.crf_refine(image, logits, iterations=20)

        threading.Thread(target=work, daemon=True).start()
        started.wait()
        time.sleep(0.5)
        print("main exits")
    """)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])


@linux_only
def test_public_functions_from_a_thread_while_the_main_thread_imports_torch():
    # torch sits in sys.modules, half initialised, while its import runs: no AttributeError from segpost.
    result = run_python("""
        import threading
        import numpy as np
        import segpost

        labels = np.zeros((8, 8), np.uint8)
        errors, stop = [], threading.Event()
        segpost.confusion_matrix(labels, labels, 2)  # compiled before the race, so the thread loops fast
        segpost.resize_labels(labels, (16, 16))

        def work():
            while not stop.is_set():
                try:
                    segpost.confusion_matrix(labels, labels, 2)
                    segpost.resize_labels(labels, (16, 16))
                    segpost.SegMetrics(2).update(labels, labels)
                except Exception as exc:
                    errors.append(repr(exc))
                    return

        thread = threading.Thread(target=work)
        thread.start()
        import torch
        stop.set()
        thread.join()
        print(errors[:1])
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


@linux_only
def test_a_non_daemon_thread_counting_at_interpreter_exit():
    # Python shuts its executors down before it joins the threads still running: counting goes on in the thread.
    result = run_python("""
        import threading, time
        import numpy as np
        from segpost.metrics import confusion_matrix

        labels = np.zeros(4_000_000, np.uint8)
        confusion_matrix(labels, labels, 3)

        def late():
            time.sleep(0.5)
            for _ in range(3):
                cm = confusion_matrix(labels, labels, 3)
            print("counted", int(cm.sum()))

        threading.Thread(target=late).start()
    """, env={"SEGPOST_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "counted 4000000"


@linux_only
def test_python_threads_and_fork_together():
    # Four Python threads score and refine at once (each call must give the
    # serial result) while the main thread forks children that do the same:
    # a child must neither hang on locks a parent thread held at the fork nor
    # differ from the serial answers.
    result = run_python("""
        import multiprocessing as mp
        import threading
        import numpy as np
        import segpost

        segpost.set_num_threads(2)
        rng = np.random.default_rng(0)
        image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
        logits = [rng.normal(size=(4, 12, 16)).astype(np.float32) for _ in range(4)]
        pred, target = rng.integers(0, 6, (2, 2_500_000), dtype=np.uint8)
        refined = [segpost.crf_refine(image, x) for x in logits]
        scored = segpost.confusion_matrix(pred, target, 6)
        failures = []
        stop = threading.Event()

        def worker(i):
            while not stop.is_set():
                if not np.array_equal(segpost.crf_refine(image, logits[i]), refined[i]):
                    failures.append(f"crf_refine in thread {i}")
                if not np.array_equal(segpost.confusion_matrix(pred, target, 6), scored):
                    failures.append(f"confusion_matrix in thread {i}")

        def child(queue):
            import faulthandler
            faulthandler.dump_traceback_later(50, exit=True)  # a hung child shows where, and ends
            ok = all(np.array_equal(segpost.crf_refine(image, x), y) for x, y in zip(logits, refined))
            queue.put(ok and np.array_equal(segpost.confusion_matrix(pred, target, 6), scored))

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(4)]  # never block exit
        for t in threads:
            t.start()
        ctx = mp.get_context("fork")
        for _ in range(5):
            queue = ctx.Queue()
            process = ctx.Process(target=child, args=(queue,))
            process.start()
            assert queue.get(timeout=60), "a forked child gave different results"
            process.join(timeout=30)
            assert process.exitcode == 0, process.exitcode
        stop.set()
        for t in threads:
            t.join()
        assert not failures, failures[:3]
        print("ok")
    """, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@linux_only
def test_forked_pool_refines_volumes_after_the_parent_did():
    # A volume's scores are upsampled with torch, whose OpenMP pool a forked child inherits broken once the
    # parent has used it: a multiprocessing pool (not a DataLoader, which sets one torch thread) hung there.
    result = run_python("""
        import faulthandler
        import multiprocessing as mp
        import numpy as np
        import segpost
        from segpost._phantoms import ct_phantom, simulate_volume_network

        phantom = ct_phantom((16, 64, 64))
        logits = simulate_volume_network(phantom.labels, 3, stride=(1, 4, 4))

        def refine(_):
            return segpost.crf_refine(phantom.volume, logits, params="ct", spacing=phantom.spacing)

        def watchdog():
            faulthandler.dump_traceback_later(50, exit=True)  # a hung child shows where, and ends

        expected = refine(0)
        with mp.get_context("fork").Pool(2, initializer=watchdog) as pool:
            results = pool.map_async(refine, range(2)).get(timeout=60)
        assert all(np.array_equal(r, expected) for r in results)
        print("ok")
    """, timeout=180)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
