"""Paired A/B of two segpost builds on the CRF benchmark's input: is a change free?

Times ``crf_refine`` at 512x512, 21 labels, 10 iterations (the inputs of
``bench_crf.py``: the astronaut photo and coarse logits at output stride 8) in
alternating fresh processes, one with the baseline build on its path and one
with the segpost of this environment, and prints each side's median and the
median of the paired ratios. It also checks that both builds give the same
labels and marginals, bit for bit, there and on every kernel variant (row
layouts, label counts, compatibility kinds, simplex sizes, grids).

The baseline is a folder holding an importable segpost, e.g.
``pip install --no-deps --target /tmp/base dist/segpost-*.whl`` of the commit
to compare against.

Run:  python benchmarks/ab_crf.py --baseline /tmp/base [--rounds 6]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = """
import hashlib, json, statistics, sys, time
import numpy as np
import segpost
from segpost.benchmarking import photo

image = photo(512)
logits = np.random.default_rng(0).normal(scale=2.0, size=(21, 64, 64)).astype(np.float32)
out = {"file": segpost.__file__}
for preset in ("deeplab", "pydensecrf"):
    labels, probs = segpost.crf_refine(image, logits, params=preset, iterations=10, return_probs=True)
    out[preset + "_digest"] = hashlib.sha256(labels.tobytes() + probs.tobytes()).hexdigest()
    # Timed inline, not with segpost.benchmarking.time_calls: this runs against the baseline build too, which
    # may predate it. The same protocol: the call above is the warm-up, then the median of the timed calls.
    times = []
    for _ in range(int(sys.argv[1])):
        start = time.perf_counter()
        segpost.crf_refine(image, logits, params=preset, iterations=10)
        times.append(time.perf_counter() - start)
    out[preset] = 1000 * statistics.median(times)
# Every kernel variant, for the bit-identity check alone (not timed): narrow rows (2-4 labels), wide
# rows of 1-8 blocks and the run-time width (70 labels), the two-Potts fast path and the generic loop
# (diagonal and matrix compatibilities, other simplex sizes, a 3-D grid), the messages (kl_divergence).
digest = hashlib.sha256()
rng = np.random.default_rng(1)
for labels in (2, 3, 4, 8, 21, 40, 70):
    crop = image[:96, :80]
    scores = rng.normal(scale=2.0, size=(labels, 12, 10)).astype(np.float32)
    for preset in ("deeplab", "pydensecrf"):
        labels_out, probs = segpost.crf_refine(crop, scores, params=preset, iterations=5, return_probs=True)
        digest.update(labels_out.tobytes() + probs.tobytes())
    unary = rng.normal(scale=2.0, size=(labels, 40, 36)).astype(np.float32)
    for compat in (4.0, -rng.uniform(1, 3, labels), rng.uniform(-2, 2, (labels, labels))):
        crf = segpost.DenseCRF(unary)
        crf.add_bilateral(image[:40, :36], 30, 13, compat=compat)
        crf.add_gaussian(3, compat=compat)
        crf.add_pairwise(rng.uniform(0, 5, (40 * 36, 3)).astype(np.float32), compat=compat)
        q = crf.inference(4)
        digest.update(q.tobytes() + np.float64(crf.kl_divergence(q)).tobytes())
    volume = segpost.DenseCRF(rng.normal(size=(labels, 6, 20, 18)).astype(np.float32))
    volume.add_gaussian(2, compat=3)
    volume.add_bilateral(rng.integers(0, 255, (6, 20, 18, 2)), 3, 20, compat=5)
    digest.update(volume.inference(4).tobytes())
out["variants_digest"] = digest.hexdigest()
print(json.dumps(out))
"""


def run(path, repeats):
    env = dict(os.environ)
    if path:
        env["PYTHONPATH"] = path + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-P", "-c", CHILD, str(repeats)], capture_output=True, text=True,
                         check=True, env=env, cwd=os.path.dirname(os.path.abspath(__file__)))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="folder with the baseline segpost (pip install --target)")
    parser.add_argument("--rounds", type=int, default=6, help="alternating process pairs")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per process (their median counts)")
    args = parser.parse_args()
    rounds = []
    for i in range(args.rounds):  # each side goes first in every other round
        if i % 2:
            new = run(None, args.repeats)
            rounds.append((run(args.baseline, args.repeats), new))
        else:
            rounds.append((run(args.baseline, args.repeats), run(None, args.repeats)))
    base, new = rounds[0]
    print(f"baseline: {base['file']}\nthis env: {new['file']}")
    for preset in ("deeplab", "pydensecrf"):
        same = base[preset + "_digest"] == new[preset + "_digest"]
        old_ms = [b[preset] for b, _ in rounds]
        new_ms = [n[preset] for _, n in rounds]
        ratios = [n / b for b, n in zip(old_ms, new_ms)]
        print(f"{preset:>10}: baseline {statistics.median(old_ms):.0f} ms, this {statistics.median(new_ms):.0f} ms, "
              f"paired ratio median {statistics.median(ratios):.3f} (range {min(ratios):.2f}-{max(ratios):.2f}), "
              f"labels and marginals {'bit-identical' if same else 'DIFFER'}")
    same = base["variants_digest"] == new["variants_digest"]
    print(f"every kernel variant (2-70 labels, Potts/diagonal/matrix, 2-D and 3-D grids, messages): "
          f"{'bit-identical' if same else 'DIFFER'}")


if __name__ == "__main__":
    main()
