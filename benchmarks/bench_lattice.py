"""Permutohedral lattice: build and filter times on a 512x512 photo.

Features (x/80, y/80, r/13, g/13, b/13) - the bilateral kernel of a dense CRF -
and C = 21 values (a VOC-sized label set), at 1 and 2 threads; vertices per
point; peak memory measured in a fresh subprocess. Side by side, in the same
process: segpost.bilateral_filter against scikit-image's windowed
denoise_bilateral on the same photo.

Run:  python benchmarks/bench_lattice.py [--repeats 7]
"""
import argparse
import json
import os
import resource
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table, time_calls  # noqa: E402

import segpost  # noqa: E402


def photo_features():
    from skimage import data

    image = data.astronaut()  # 512 x 512 x 3
    h, w, _ = image.shape
    yy, xx = np.mgrid[0:h, 0:w]
    features = np.concatenate(
        [np.stack([xx.ravel(), yy.ravel()], 1) / 80.0, image.reshape(-1, 3).astype(np.float64) / 13.0], 1
    ).astype(np.float32)
    values = np.random.default_rng(0).random((h * w, 21)).astype(np.float32)
    return image, features, values


def memory_probe(threads):
    """Peak RSS growth of one build + one filter, in this (fresh) process."""
    segpost.set_num_threads(threads)
    _, features, values = photo_features()
    before = reset_peak_rss()
    lattice = segpost.PermutohedralLattice(features)
    lattice.filter(values)
    print(json.dumps({"peak_kib": peak_rss_kib() - before, "lattice_bytes": lattice.nbytes}))


def peak_rss_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak_rss():
    """Reset the peak-RSS counter (Linux >= 4.0) and return the current RSS in KiB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return peak_rss_kib()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--memory-probe", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe is not None:
        return memory_probe(args.memory_probe)

    image, features, values = photo_features()
    n = len(features)
    print(f"512x512 photo (skimage astronaut), N = {n}, d = 5, C = 21; median of {args.repeats} runs")
    rows = []
    previous = segpost.get_num_threads()
    for threads in (1, 2):
        segpost.set_num_threads(threads)
        build = time_calls(lambda: segpost.PermutohedralLattice(features), repeats=args.repeats).median
        lattice = segpost.PermutohedralLattice(features)
        filt = time_calls(lambda: lattice.filter(values), repeats=args.repeats).median
        filt_norm = time_calls(lambda: lattice.filter(values, normalize=True), repeats=args.repeats).median
        probe = subprocess.run(
            [sys.executable, __file__, "--memory-probe", str(threads)], capture_output=True, text=True, check=True
        )
        mem = json.loads(probe.stdout)
        rows.append(
            [
                threads,
                f"{build * 1e3:.1f}",
                f"{filt * 1e3:.1f}",
                f"{filt_norm * 1e3:.1f}",
                f"{lattice.num_vertices / n:.3f}",
                f"{lattice.nbytes / 2**20:.1f}",
                f"{mem['peak_kib'] / 1024:.1f}",
            ]
        )
    segpost.set_num_threads(previous)
    print_table(
        ["threads", "build ms", "filter ms (C=21)", "normalised ms", "vertices/point", "lattice MiB", "peak MiB"],
        rows,
    )

    # Peer: scikit-image's bilateral filter (a windowed brute force) on the same photo.
    from skimage.restoration import denoise_bilateral

    sigma_spatial, sigma_color = 3.0, 0.1
    image_float = image.astype(np.float32) / 255.0
    ours = time_calls(
        lambda: segpost.bilateral_filter(image_float, sigma_spatial, sigma_color), repeats=max(3, args.repeats // 2)
    ).median
    theirs = time_calls(
        lambda: denoise_bilateral(image_float, sigma_color=sigma_color, sigma_spatial=sigma_spatial, channel_axis=-1),
        repeats=3,
        warmup=0,
    ).median
    print()
    print(f"bilateral filter, 512x512 RGB, sigma_spatial={sigma_spatial}, sigma_color={sigma_color} (0..1 units), "
          f"{segpost.get_num_threads()} threads")
    print_table(
        ["implementation", "median ms", "ratio"],
        [
            ["segpost.bilateral_filter", f"{ours * 1e3:.1f}", "1.0x"],
            ["skimage denoise_bilateral", f"{theirs * 1e3:.1f}", f"{theirs / ours:.1f}x slower"],
        ],
    )


if __name__ == "__main__":
    main()
