"""Dense CRF end to end: segpost.crf_refine against pydensecrf, in one process.

Both start from the same coarse logits (output stride 8) of a scikit-image photo
and end with a label map: upsample bilinearly, unary, two kernels, mean field,
argmax. Prints medians and the ratio pydensecrf / segpost; the appearance
kernel's construction alone; peak memory of each is measured in a fresh subprocess.

Run:  python benchmarks/bench_crf.py [--quick]
      python benchmarks/bench_crf.py --realistic   (hand-set gaps: absent classes 45 below the top; label pruning)
      (a trained network's logits: benchmarks/bench_pruning.py)
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table, time_calls  # noqa: E402

import segpost  # noqa: E402
from segpost.benchmarking import photo, pydensecrf_labels  # noqa: E402


def coarse_logits(size, labels, seed=0):
    return np.random.default_rng(seed).normal(scale=2.0, size=(labels, size // 8, size // 8)).astype(np.float32)


def run_pydensecrf(image, logits, params, iterations):
    return pydensecrf_labels(image, logits, params, iterations)


def run_segpost(image, logits, params, iterations):
    return segpost.crf_refine(image, logits, params=params, iterations=iterations)


def run_segpost_unpruned(image, logits, params, iterations):
    return segpost.crf_refine(image, logits, params=params, iterations=iterations, prune=False)


RUNNERS = {"segpost": run_segpost, "pydensecrf": run_pydensecrf}


def realistic_inputs(size, classes, present, seed=0):
    """A semi-synthetic scene and a trained network's kind of logits for it, at output stride 8.

    The demo's scene (photo textures in 5 irregular regions, an exact label
    map) cut into quadrants gives up to 20 regions, each given one of
    ``present`` classes drawn from ``classes``. The logits are those of a
    confident network at output stride 8: a present class's one-hot map
    averaged over 8x8 cells (blurry at edges) spans -15 (outside its
    region) to +15 (inside); an absent class sits at -30; noise of sigma 1
    on every logit. So an absent class is about 30 below the top inside a
    region and 15-30 below it at boundaries. (Less confident logits, absent
    classes within about 20 of the top somewhere, prune nothing:
    ``crf/pruning.py``.)
    """
    from segpost.demo import make_scene

    image, regions = make_scene((size, size), seed=seed)
    quadrant = (np.arange(size)[:, None] >= size // 2) * 2 + (np.arange(size)[None, :] >= size // 2)
    rng = np.random.default_rng(seed)
    ids = rng.choice(classes, size=present, replace=False)
    region_class = ids[rng.permutation(np.arange(20) % present)]  # every present class gets a region
    truth = region_class[regions * 4 + quadrant]
    logits = np.full((classes, size // 8, size // 8), -30.0, np.float32)
    for c in ids:
        logits[c] = 30 * (truth == c).reshape(size // 8, 8, size // 8, 8).mean(axis=(1, 3)) - 15
    logits += rng.normal(scale=1.0, size=logits.shape)
    return np.ascontiguousarray(image), logits.astype(np.float32)


def compare_realistic(name, classes, present, preset, repeats, size=512, iterations=10):
    """Pruned segpost (crf_refine's default), unpruned segpost and pydensecrf on one realistic input."""
    image, logits = realistic_inputs(size, classes, present)
    params = segpost.CRFParams.coerce(preset)
    runners = {"pruned": run_segpost, "unpruned": run_segpost_unpruned, "pydensecrf": run_pydensecrf}
    labels = {key: fn(image, logits, params, iterations) for key, fn in runners.items()}  # also the warm-up
    timings = time_calls({key: (lambda fn=fn: fn(image, logits, params, iterations)) for key, fn in runners.items()},
                         repeats=repeats, warmup=0)
    ms = {key: 1e3 * t.median for key, t in timings.items()}
    return [name, f"{classes} ({present} present)", preset, f"{ms['pydensecrf']:.0f}", f"{ms['unpruned']:.0f}",
            f"{ms['pruned']:.0f}", f"{ms['unpruned'] / ms['pruned']:.1f}x", f"{ms['pydensecrf'] / ms['pruned']:.1f}x",
            f"{100 * (labels['pruned'] == labels['unpruned']).mean():.2f}%",
            f"{100 * (labels['pruned'] == labels['pydensecrf']).mean():.2f}%"]


def compare_random_pruning(repeats, size=512, labels=21, iterations=10):
    """On random logits nothing is prunable: crf_refine with pruning (its check) against without."""
    image, logits = photo(size), coarse_logits(size, labels)
    params = segpost.CRFParams.deeplab()
    timings = time_calls({"pruned": lambda: run_segpost(image, logits, params, iterations),
                          "unpruned": lambda: run_segpost_unpruned(image, logits, params, iterations)},
                         repeats=repeats, warmup=0)
    ms = {key: 1e3 * t.median for key, t in timings.items()}
    return [f"random, {labels} labels", f"{ms['unpruned']:.0f}", f"{ms['pruned']:.0f}",
            f"{ms['unpruned'] / ms['pruned']:.2f}x"]


def measure_memory(which, size, labels, iterations):
    """Peak RSS growth (MiB) of one run in a fresh process."""
    code = f"""
import json, sys
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import bench_crf as b
from bench_lattice import reset_peak_rss, peak_rss_kib
image, logits = b.photo({size}), b.coarse_logits({size}, {labels})
params = b.segpost.CRFParams.pydensecrf()
import torch, pydensecrf.densecrf  # imports are not the run's memory
before = reset_peak_rss()
b.RUNNERS[{which!r}](image, logits, params, {iterations})
print(json.dumps((peak_rss_kib() - before) / 1024))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(size, labels, preset, iterations, repeats):
    """Both libraries timed alternately (one run each per round, after a warm-up), medians compared."""
    image, logits = photo(size), coarse_logits(size, labels)
    params = segpost.CRFParams.coerce(preset)
    ours_labels = run_segpost(image, logits, params, iterations)  # these two runs are the warm-up
    ref_labels = run_pydensecrf(image, logits, params, iterations)
    timings = time_calls({name: (lambda fn=fn: fn(image, logits, params, iterations)) for name, fn in RUNNERS.items()},
                         repeats=repeats, warmup=0, rotate=False)
    t_ours, t_ref = timings["segpost"].median, timings["pydensecrf"].median
    agree = (ours_labels == ref_labels).mean()
    return [f"{size}x{size}", labels, preset, iterations, f"{t_ref * 1e3:.0f}", f"{t_ours * 1e3:.0f}",
            f"{t_ref / t_ours:.1f}x", f"{100 * agree:.2f}%"]


def compare_appearance_build(preset, repeats):
    """The appearance kernel alone (features, lattice, normalisation), 512x512: each library's
    add-a-bilateral-term call, timed alternately; the gap the end-to-end ratio inherits."""
    import pydensecrf.densecrf as dcrf

    image = np.ascontiguousarray(photo(512))
    params = segpost.CRFParams.coerce(preset)
    unary = np.ones((21, 512 * 512), np.float32)

    def theirs_model():
        d = dcrf.DenseCRF2D(512, 512, 21)
        d.setUnaryEnergy(unary)
        return d

    # The model and its unary (the setups, untimed) are not the kernel's cost.
    add_ours = (lambda: segpost.DenseCRF._from_point_major(unary.T, (512, 512)),
                lambda crf: crf.add_bilateral(image, params.bi_xy, params.bi_rgb, compat=params.bi_weight))
    add_theirs = (theirs_model,
                  lambda d: d.addPairwiseBilateral(sxy=params.bi_xy, srgb=params.bi_rgb, rgbim=image,
                                                   compat=params.bi_weight))
    warm = add_ours[0]()  # the warm-up, which also counts the vertices
    add_ours[1](warm)
    vertices = warm.pairwise_terms[-1]["num_vertices"]
    del warm
    timings = time_calls({"segpost": add_ours, "pydensecrf": add_theirs}, repeats=repeats, warmup=0, rotate=False)
    t_ours, t_ref = timings["segpost"].median, timings["pydensecrf"].median
    return [preset, vertices, f"{t_ref * 1e3:.1f}", f"{t_ours * 1e3:.1f}", f"{t_ref / t_ours:.1f}x"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the 512x512 table, 3 repeats")
    parser.add_argument("--realistic", action="store_true",
                        help="only the hand-set peaked logits (absent classes about 45 below the top): label pruning; "
                             "a trained network's logits: bench_pruning.py")
    args = parser.parse_args()
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        sys.exit("pydensecrf is needed for the comparison: make install (or pip install pydensecrf2)")
    repeats = 3 if args.quick else 7
    if args.realistic:
        main_realistic(repeats)
        return
    headers = ["image", "labels", "preset", "iters", "pydensecrf ms", "segpost ms", "speedup", "same labels"]
    print(f"Dense CRF end to end (coarse logits at stride 8 -> labels), {segpost.get_num_threads()} threads, "
          f"median of {repeats}")
    rows = [compare(512, 21, preset, its, repeats) for preset in ("deeplab", "pydensecrf") for its in (5, 10)]
    print_table(headers, rows)
    if args.quick:
        return
    print("\nsize sweep (21 labels, pydensecrf preset, 10 iterations)")
    print_table(headers, [compare(s, 21, "pydensecrf", 10, 3 if s < 2048 else 1) for s in (256, 512, 1024, 2048)])
    print("\nlabel sweep (512x512, pydensecrf preset, 10 iterations)")
    print_table(headers, [compare(512, n, "pydensecrf", 10, 3) for n in (2, 21, 150)])
    print(f"\nappearance kernel alone (features, lattice, normalisation), 512x512, median of {repeats}")
    print_table(["preset", "vertices", "pydensecrf ms", "segpost ms", "speedup"],
                [compare_appearance_build(preset, repeats) for preset in ("deeplab", "pydensecrf")])
    print("\npeak memory of one run in a fresh process (512x512, 21 labels, 10 iterations), MiB")
    mem = {which: measure_memory(which, 512, 21, 10) for which in ("pydensecrf", "segpost")}
    print_table(["pydensecrf MiB", "segpost MiB"], [[f"{mem['pydensecrf']:.0f}", f"{mem['segpost']:.0f}"]])


def main_realistic(repeats):
    print(f"Hand-set peaked logits (absent classes at -30, present ones up to +15: not a trained network's; "
          f"see bench_pruning.py), 512x512, 10 iterations, {segpost.get_num_threads()} threads, median of {repeats} "
          f"(paired rounds): crf_refine's label pruning")
    headers = ["input", "labels", "preset", "pydensecrf ms", "unpruned ms", "pruned ms", "vs unpruned",
               "vs pydensecrf", "same labels as unpruned", "same labels as pydensecrf"]
    rows = [compare_realistic(name, classes, present, preset, repeats)
            for name, classes, present in (("hand-set, VOC-like", 21, 4), ("hand-set, ADE-like", 150, 16))
            for preset in ("deeplab", "pydensecrf")]
    print_table(headers, rows)
    print("\nrandom logits (nothing prunable): the check's cost, DeepLab preset")
    print_table(["input", "unpruned ms", "pruned ms", "ratio"], [compare_random_pruning(repeats)])


if __name__ == "__main__":
    main()
