"""The command line at dataset scale: `segpost eval` against PNG decoding alone, `segpost refine` with 1 and 2 workers.

(a) `segpost eval` on 500 pairs of 1024x2048 uint8 label PNGs (19 classes,
    blocky maps like a Cityscapes frame, 10 distinct maps copied to 500
    names), ``--workers 2``, timed as a whole command (a fresh process, as a
    user runs it), against decoding the same 1000 files alone with the same
    reader (``segpost._datasets.read_label_map``) on the same 2 threads, and
    against counting the matrices alone (``SegMetrics.update`` on decoded
    maps).
(b) `segpost refine` over a folder of 100 photos of 512x512 (crops of
    scikit-image's astronaut, coffee, chelsea and rocket) with peaked logits
    (21 classes, 4 present, stride 8, saved as .npy), ``--workers 1`` (one
    process, all cores' threads) against ``--workers 2`` (two processes, cores
    / 2 threads each), and the per-image cost of ``crf_refine`` in-process.

Everything is generated in a temporary folder. Wall-clock medians of
alternating runs; the machine's other load moves them.

Run:  python benchmarks/bench_cli.py [--pairs 500] [--images 100] [--repeats 2]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table, time_calls  # noqa: E402

import segpost  # noqa: E402
from segpost._datasets import list_files, pair_files, read_ahead, read_label_map  # noqa: E402

COMMAND = [sys.executable, "-m", "segpost"]


def blocky(rng, h, w, k, boxes=40):
    labels = np.full((h, w), rng.integers(0, k), np.uint8)
    for _ in range(boxes):
        y, x = rng.integers(0, h), rng.integers(0, w)
        labels[y:y + rng.integers(h // 20, h // 3), x:x + rng.integers(w // 20, w // 3)] = rng.integers(0, k)
    return labels


def command(args, threads=None):
    """A callable that runs the command line ``args`` (with SEGPOST_NUM_THREADS=threads), for time_calls."""
    env = dict(os.environ, SEGPOST_NUM_THREADS=str(threads)) if threads else None
    return lambda: subprocess.run(args, check=True, stdout=subprocess.DEVNULL, env=env)


def startup_seconds(root, repeats=3):
    """A fresh `segpost eval` and `segpost refine` on one 8x8 file: what every command pays once (imports,
    loading the compiled kernels)."""
    for folder in ("pred", "gt", "images", "scores"):
        (root / folder).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(root / "pred" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(root / "gt" / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "a.png")
    np.save(root / "scores" / "a.npy", np.zeros((2, 8, 8), np.float32))
    ev = COMMAND + ["eval", str(root / "pred"), str(root / "gt"), "--num-classes", "2", "-q"]
    refine = COMMAND + ["refine", str(root / "images"), str(root / "scores"), "-o", str(root / "out"), "--overwrite",
                        "-q"]
    return (time_calls(command(ev), repeats=repeats, warmup=0).median,
            time_calls(command(refine), repeats=repeats, warmup=0).median)


def bench_eval(root, pairs, repeats, workers=2):
    rng = np.random.default_rng(0)
    (root / "pred").mkdir(parents=True)
    (root / "gt").mkdir()
    for i in range(10):
        gt = blocky(rng, 1024, 2048, 19)
        gt[:40] = 255  # an ignored band, like the ego vehicle
        pred = gt.copy()
        for _ in range(20):  # the model's mistakes: more blocks
            y, x = rng.integers(0, 1024), rng.integers(0, 2048)
            pred[y:y + 60, x:x + 120] = rng.integers(0, 19)
        Image.fromarray(gt, mode="L").save(root / "gt" / f"m{i}.png")
        Image.fromarray(pred, mode="L").save(root / "pred" / f"m{i}.png")
    for folder in ("pred", "gt"):
        for n in range(pairs):
            shutil.copyfile(root / folder / f"m{n % 10}.png", root / folder / f"frame_{n:04d}.png")
        for i in range(10):
            (root / folder / f"m{i}.png").unlink()
    found, _, _ = pair_files(list_files(root / "pred"), list_files(root / "gt"))

    def decode_all():  # what `segpost eval` does, less the counting
        for _ in read_ahead(lambda pair: (read_label_map(pair[1]), read_label_map(pair[2])), found, workers):
            pass

    decoded = [(read_label_map(p), read_label_map(g)) for _, p, g in found[:10]]

    def count_all():
        metrics = segpost.SegMetrics(19, ignore_index=255)
        for n in range(pairs):
            metrics.update(*decoded[n % 10])

    ev = COMMAND + ["eval", str(root / "pred"), str(root / "gt"), "--num-classes", "19", "--ignore-index", "255",
                    "--workers", str(workers), "-q"]
    decode_all()  # the files into the page cache, the kernels compiled
    count_all()
    timings = time_calls({"decode": decode_all, "count": count_all, "command": command(ev)}, repeats=repeats,
                         warmup=0, rotate=False)
    return {name: t.median for name, t in timings.items()}


def photos():
    from skimage import data, transform

    out = []
    for photo in (data.astronaut(), data.coffee(), data.chelsea(), data.rocket()):
        scale = 640 / min(photo.shape[:2])
        out.append((transform.rescale(photo, scale, channel_axis=-1, anti_aliasing=True) * 255).astype(np.uint8))
    return out


def peaked_logits(image, rng, classes=21, present=4, stride=8):
    """A confident network's scores: 4 classes from the image's colours, at stride 8, with noise."""
    small = image[::stride, ::stride].astype(np.float32)
    chosen = rng.choice(classes, present, replace=False)
    centres = small.reshape(-1, 3)[rng.choice(small.shape[0] * small.shape[1], present, replace=False)]
    nearest = np.argmin(((small[:, :, None, :] - centres) ** 2).sum(-1), axis=-1)
    logits = rng.normal(0, 1, size=(classes,) + nearest.shape).astype(np.float32)
    logits[chosen[nearest], *np.indices(nearest.shape)] += 8
    return logits


def bench_refine(root, images, repeats):
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "scores").mkdir()
    sources = photos()
    first = None
    for n in range(images):
        photo = sources[n % len(sources)]
        y, x = rng.integers(0, photo.shape[0] - 512 + 1), rng.integers(0, photo.shape[1] - 512 + 1)
        crop = photo[y:y + 512, x:x + 512]
        crop = np.ascontiguousarray(crop[:, ::-1] if n % 2 else crop)
        logits = peaked_logits(crop, rng)
        Image.fromarray(crop).save(root / "images" / f"img_{n:04d}.png")
        np.save(root / "scores" / f"img_{n:04d}.npy", logits)
        first = first or (crop, logits)
    per_image = {}
    for threads in (1, 2):
        segpost.set_num_threads(threads)
        per_image[threads] = time_calls(lambda: segpost.crf_refine(*first), repeats=5, warmup=1).median
    # (workers, thread cap): one process on all cores, one process on one thread, two processes on one each.
    runs = [(1, None), (1, 1), (2, None)]
    out = root / "out"

    def empty_output():  # untimed, before every run: each run writes every label map
        shutil.rmtree(out, ignore_errors=True)

    def run(workers, cap):
        refine = command(COMMAND + ["refine", str(root / "images"), str(root / "scores"), "-o", str(out),
                                    "--workers", str(workers), "-q"], threads=cap)
        return empty_output, lambda _: refine()

    timings = time_calls({(workers, cap): run(workers, cap) for workers, cap in runs}, repeats=repeats, warmup=0)
    return per_image, {run: t.median for run, t in timings.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip", choices=["eval", "refine"], help="leave one part out")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        startup, refine_startup = startup_seconds(Path(tmp) / "startup")
        print(f"{cores} cores; on one 8x8 file `segpost eval` takes {startup:.2f} s, `segpost refine` "
              f"{refine_startup:.2f} s (start-up: imports, kernels)")
        if args.skip != "eval":
            t = bench_eval(Path(tmp) / "eval", args.pairs, args.repeats)
            print(f"\n(a) segpost eval, {args.pairs} pairs of 1024x2048 uint8 PNGs, --workers 2, median of "
                  f"{args.repeats}")
            print_table(["what", "s", "pairs/s"], [
                ["PNG decoding alone (2 threads, same reader)", f"{t['decode']:.2f}",
                 f"{args.pairs / t['decode']:.1f}"],
                ["counting alone (SegMetrics.update)", f"{t['count']:.2f}", f"{args.pairs / t['count']:.1f}"],
                ["segpost eval, whole command", f"{t['command']:.2f}", f"{args.pairs / t['command']:.1f}"],
            ])
            print(f"whole command / decoding alone: {t['command'] / t['decode']:.2f}x "
                  f"({t['command'] - t['decode'] - startup:.2f} s beyond decoding and start-up)")
        if args.skip != "refine":
            per_image, t = bench_refine(Path(tmp) / "refine", args.images, args.repeats)
            print(f"\n(b) segpost refine, {args.images} photos of 512x512, 21 classes (4 present), median of "
                  f"{args.repeats}")
            print(f"crf_refine in-process: {1000 * per_image[1]:.0f} ms/image on 1 thread, "
                  f"{1000 * per_image[2]:.0f} ms on 2")
            print_table(["--workers", "threads each", "s", "images/s", "s/image"], [
                [w, cap or max(1, cores // w), f"{t[w, cap]:.1f}", f"{args.images / t[w, cap]:.2f}",
                 f"{t[w, cap] / args.images:.3f}"] for w, cap in t])
            two = t[2, None]
            print(f"2 workers / 1 worker throughput: {t[1, None] / two:.2f}x against 1 worker on all cores' "
                  f"threads, {t[1, 1] / two:.2f}x against 1 worker on 1 thread (SEGPOST_NUM_THREADS=1)")


if __name__ == "__main__":
    main()
