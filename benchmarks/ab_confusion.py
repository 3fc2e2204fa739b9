"""The confusion matrix's two counting paths side by side, in one process, on the benchmark's input.

``_counts_by_lookup`` (8- and 16-bit labels, K <= 254: table lookups, the
ignore filter folded into the tables) against ``_counts_by_compare`` (any
dtype: range checks per pixel, ignored pixels counted by a second pass), each
with the same thread split, timed in alternating rounds; the two must agree.

Run:  python benchmarks/ab_confusion.py
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table, time_calls  # noqa: E402
from bench_metrics import H, K, W, maps  # noqa: E402

import segpost  # noqa: E402
from segpost.metrics import confusion  # noqa: E402


def main():
    pred, target = (a.reshape(-1) for a in maps(np.uint8))
    rows = []
    for threads in (1, 2):
        segpost.set_num_threads(threads)
        paths = {"lookup": lambda: confusion._counts_by_lookup(pred, target, K, (255,)),
                 "compare": lambda: confusion._counts_by_compare(pred, target, K, (255,))}
        (fast_cm, fast_bad), (plain_cm, plain_bad) = paths["lookup"](), paths["compare"]()
        assert np.array_equal(fast_cm, plain_cm) and fast_bad == plain_bad
        ms = {name: 1e3 * t.median for name, t in time_calls(paths, repeats=41, warmup=0).items()}
        for name, t in ms.items():
            rows.append([threads, name, f"{t:.2f}", f"{H * W / t / 1e3:.0f}", f"{ms['compare'] / t:.2f}x"])
    print(f"uint8 {H}x{W}, {K} classes, 10% ignore (255): counting paths, paired rounds")
    print_table(["threads", "path", "median ms", "Mpx/s", "speed vs compare"], rows)


if __name__ == "__main__":
    main()
