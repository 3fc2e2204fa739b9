"""upsample_argmax against the naive resize-then-argmax: time and peak memory.

150 classes (ADE20K) at output stride 8 for a 1024x2048 image: the naive way
holds the full (150, 1024, 2048) float32 logits (1.17 GiB). Peak memory is
measured in a fresh process per method.

Run:  python benchmarks/bench_upsample.py
"""
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table, time_calls  # noqa: E402

H, W, C = 1024, 2048, 150


def logits():
    return np.random.default_rng(0).normal(size=(C, H // 8, W // 8)).astype(np.float32)


def naive(x):
    from segpost import resize_logits

    return resize_logits(x, (H, W)).argmax(axis=0)


def blocked(x):
    from segpost import upsample_argmax

    return upsample_argmax(x, (H, W))


def probe(name):
    code = f"""
import json, sys
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import bench_upsample as b
from bench_lattice import reset_peak_rss, peak_rss_kib
x = b.logits()
import segpost, torch  # imports before the baseline
before = reset_peak_rss()
getattr(b, {name!r})(x)
print(json.dumps((peak_rss_kib() - before) / 1024))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    x = logits()
    agree = (naive(x) == blocked(x)).mean()
    rows = []
    for name, fn in (("resize_logits + argmax (naive)", naive), ("upsample_argmax (64-row blocks)", blocked)):
        key = "naive" if "naive" in name else "blocked"
        rows.append([name, f"{time_calls(lambda: fn(x), repeats=3).median * 1e3:.0f}", f"{probe(key):.0f}"])
    print(f"{C} classes, stride-8 logits -> {H}x{W} labels; same labels: {100 * agree:.3f}%")
    print_table(["method", "median ms", "peak MiB"], rows)


if __name__ == "__main__":
    main()
