"""The ``segpost`` command line: demo, refine, eval, bench.

A user mistake (missing file, unreadable image, wrong shapes, bad JSON) is
reported as one sentence on stderr with exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm"}


class UserError(Exception):
    """A mistake on the command line: reported as one sentence, exit code 2."""


# ------------------------------------------------------------------------------ demo

def _demo(args) -> int:
    from .demo import run_demo

    rows, elapsed, out = run_demo(args.out, params=args.preset)
    print()
    print(f"{'':<20} {'mIoU':>8} {'boundary F':>11} {'trimap acc':>11}")
    for name, r in rows.items():
        print(f"{name:<20} {100 * r['miou']:>7.2f}% {100 * r['boundary_f']:>10.2f}% {100 * r['trimap_acc']:>10.2f}%")
    gain = rows["CRF-refined"]["miou"] - rows["coarse (upsampled)"]["miou"]
    print(f"CRF: {elapsed * 1000:.0f} ms, mIoU {100 * gain:+.2f} points")
    print(f"pictures: {out / 'demo.png'} (side by side), input.png, ground_truth.png, coarse.png, refined.png")
    return 0


# ---------------------------------------------------------------------------- refine

def _read_image(path):
    import numpy as np
    from skimage import io

    p = Path(path)
    if not p.is_file():
        raise UserError(f"image file not found: {path}")
    try:
        image = io.imread(p)
    except Exception as exc:  # any decoder error is a user-facing "cannot read"
        raise UserError(f"cannot read {path} as an image ({type(exc).__name__}: {exc})") from None
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]  # drop alpha
    if image.dtype == np.uint16:
        # A file's bit depth says its range: 16-bit PNG/TIFF to [0, 1] floats (segpost's rule reads
        # integer arrays as 0..255 whatever their dtype).
        image = image.astype(np.float32) / 65535
    return image


def _read_scores(path):
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise UserError(f"scores file not found: {path}")
    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                key = "logits" if "logits" in z.files else ("probs" if "probs" in z.files else z.files[0])
                arr = z[key]
        elif p.suffix in (".pt", ".pth"):
            import torch

            arr = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(arr, dict):
                arr = arr.get("logits", arr.get("out", next(iter(arr.values()))))
            arr = arr.detach().float().numpy()
        else:
            raise UserError(f"unsupported scores format {p.suffix!r}: use .npy, .npz or .pt")
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot read scores from {path} ({type(exc).__name__}: {exc})") from None
    arr = np.asarray(arr)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise UserError(f"scores in {path} must be (C, h, w), got shape {arr.shape}")
    return arr.astype(np.float32)


def _check_output(path, suffixes, option):
    """Refuse an output path before any work: a wrong extension or a folder that cannot be written."""
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise UserError(f"{option} must end in {' or '.join(suffixes)}, got {path}")
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"cannot write {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UserError(f"cannot write {path}: the folder {folder} is not writable")


def _write_palette_png(path, labels):
    import numpy as np
    from PIL import Image

    from .viz import voc_palette

    if labels.max() > 255:
        raise UserError(f"cannot write {labels.max() + 1} classes as a palette PNG (at most 256)")
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette(voc_palette().reshape(-1).tolist())
    img.save(path)


def _refine(args) -> int:
    import numpy as np

    from ._validation import warn_if_probabilities
    from .crf import CRFParams, crf_refine

    _check_output(args.output, (".png",), "-o/--output (a palette PNG of labels)")
    if args.overlay:
        _check_output(args.overlay, (".png", ".jpg", ".jpeg"), "--overlay")
    if args.save_probs:
        _check_output(args.save_probs, (".npy",), "--save-probs")
    image = _read_image(args.image)
    scores = _read_scores(args.logits)
    params = CRFParams.coerce(args.preset)
    if args.params:
        try:
            changes = json.loads(args.params)
        except json.JSONDecodeError as exc:
            raise UserError(f"--params is not valid JSON ({exc.msg} at character {exc.pos})") from None
        if not isinstance(changes, dict):
            raise UserError("--params must be a JSON object such as '{\"bi_weight\": 5}'")
        params = CRFParams.coerce({**{f: getattr(params, f) for f in params.__dataclass_fields__}, **changes})
    kwargs = {"probs": scores} if args.probs else {"logits": scores}
    with warnings.catch_warnings():
        if not args.probs:  # the same check, naming the command line's option instead of the API's
            warn_if_probabilities(scores, fix="--probs")
            warnings.filterwarnings("ignore", message="the logits are all in")
        labels, probs = crf_refine(image, iterations=args.iterations, params=params, return_probs=True, **kwargs)
    _write_palette_png(args.output, labels)
    print(f"wrote {args.output} ({labels.shape[1]}x{labels.shape[0]}, {scores.shape[0]} classes)")
    if args.overlay:
        from skimage import io

        from .viz import overlay

        io.imsave(args.overlay, overlay(image, labels), check_contrast=False)
        print(f"wrote {args.overlay}")
    if args.save_probs:
        np.save(args.save_probs, probs)
        print(f"wrote {args.save_probs} (float32 {probs.shape})")
    return 0


# ------------------------------------------------------------------------------ eval

def _read_label_map(path):
    """Integer labels from a palette, 8-bit or 16-bit PNG (palette indices, not colours)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode == "P":
                return np.asarray(img, dtype=np.uint8)
            if img.mode in ("L", "I", "I;16", "I;16B", "I;16L"):
                return np.asarray(img).astype(np.int64)
            raise UserError(f"{path} is a {img.mode} image; label maps must be palette, 8-bit or 16-bit gray")
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot read {path} as a label map ({type(exc).__name__})") from None


def _pairs(pred_dir, gt_dir):
    pred_root, gt_root = Path(pred_dir), Path(gt_dir)
    for root, name in ((pred_root, "PRED_DIR"), (gt_root, "GT_DIR")):
        if not root.is_dir():
            raise UserError(f"{name} is not a folder: {root}")
    preds = {p.stem: p for p in sorted(pred_root.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    gts = {p.stem: p for p in sorted(gt_root.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    common = sorted(set(preds) & set(gts))
    return [(preds[s], gts[s]) for s in common], sorted(set(gts) - set(preds)), sorted(set(preds) - set(gts))


def _eval(args) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from .metrics import SegMetrics

    names = None
    if args.class_names:
        path = Path(args.class_names)
        if not path.is_file():
            raise UserError(f"class names file not found: {path}")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if len(names) != args.num_classes:
            raise UserError(f"{path} has {len(names)} names but --num-classes is {args.num_classes}")
    pairs, missing, unmatched = _pairs(args.pred_dir, args.gt_dir)
    if missing:
        print(f"warning: {len(missing)} ground-truth file(s) have no prediction, e.g. {missing[:3]}", file=sys.stderr)
    if unmatched:
        print(f"warning: {len(unmatched)} prediction(s) have no ground truth, e.g. {unmatched[:3]}", file=sys.stderr)
    if not pairs:
        raise UserError("no prediction/ground-truth pairs with the same file name stem were found")
    # Invalid labels are counted here and judged once all pairs are read (the count goes in the message).
    metrics = SegMetrics(args.num_classes, ignore_index=args.ignore_index, class_names=names, on_invalid="ignore",
                         boundary=args.boundary)
    mismatched, unreadable = [], []

    def load(pair):
        try:
            return pair, _read_label_map(pair[0]), _read_label_map(pair[1])
        except UserError as exc:  # one bad file is listed and skipped, not fatal
            return pair, exc, None

    with ThreadPoolExecutor(max(1, args.workers)) as pool:  # decoding releases the GIL
        for (pred_path, gt_path), pred, gt in tqdm(pool.map(load, pairs), total=len(pairs), desc="eval", unit="img",
                                                   disable=not sys.stderr.isatty()):
            if gt is None:
                unreadable.append(str(pred))
                continue
            if pred.shape != gt.shape:
                mismatched.append(f"{pred_path.name} {pred.shape} vs {gt.shape}")
                continue
            metrics.update(pred, gt)
    evaluated = len(pairs) - len(mismatched) - len(unreadable)
    if evaluated == 0:
        raise UserError(f"no pair could be evaluated: {'; '.join((unreadable + mismatched)[:3])}")
    if unreadable:
        print(f"warning: skipped {len(unreadable)} unreadable pair(s): {'; '.join(unreadable[:3])}", file=sys.stderr)
    if mismatched:
        print(f"warning: skipped {len(mismatched)} pair(s) of different sizes, e.g. {mismatched[:3]}", file=sys.stderr)
    if metrics.num_invalid and not args.drop_invalid:
        raise UserError(f"{metrics.num_invalid} pixels have labels outside [0, {args.num_classes}) that are not "
                        f"ignored: is --num-classes right? (--ignore-index for void labels, or --drop-invalid to "
                        f"count and skip them)")
    result = metrics.compute()
    print(result.table())
    print(f"{evaluated} image pairs evaluated")
    if result.num_invalid:
        print(f"warning: {result.num_invalid} pixels had labels outside [0, {args.num_classes}) and were not counted "
              f"(--drop-invalid)", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2))
        print(f"wrote {args.json}")
    if args.plot:
        from .viz import plot_confusion_matrix

        plot_confusion_matrix(result).savefig(args.plot, dpi=100)
        print(f"wrote {args.plot}")
    return 0


# ----------------------------------------------------------------------------- bench

def _bench(args) -> int:
    from .benchmarking import crf_timings, metrics_throughput

    print("dense CRF, crf_refine end to end (stride-8 logits -> labels), pydensecrf preset, 10 iterations")
    print(f"{'image':>10} {'labels':>7} {'segpost ms':>11} {'pydensecrf ms':>14} {'speedup':>8}")
    for row in crf_timings(sizes=(256, 512), labels=(21,), repeats=args.repeats):
        ref = f"{row['pydensecrf_ms']:.0f}" if row["pydensecrf_ms"] else "n/a"
        speed = f"{row['pydensecrf_ms'] / row['segpost_ms']:.1f}x" if row["pydensecrf_ms"] else "-"
        print(f"{row['size']:>10} {row['labels']:>7} {row['segpost_ms']:>11.0f} {ref:>14} {speed:>8}")
    print("\nconfusion matrix, 1024x2048, 19 classes, 10% ignore")
    for row in metrics_throughput(repeats=args.repeats):
        print(f"{row['dtype']:>6} segpost {row['segpost_mpx']:>6.0f} Mpx/s   np.bincount {row['bincount_mpx']:>5.0f} Mpx/s   "
              f"({row['segpost_mpx'] / row['bincount_mpx']:.1f}x)")
    return 0


# ---------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segpost",
        description="Dense CRF refinement, metrics and pipelines for semantic segmentation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the demo on photos shipped with scikit-image and write pictures",
                          description="Builds a scene with an exact ground truth from scikit-image photos, simulates "
                                      "a network's coarse output, refines it with the CRF, prints the gain and writes "
                                      "pictures.")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--preset", default="deeplab", choices=["deeplab", "pydensecrf"], help="CRF parameters")
    demo.set_defaults(func=_demo)

    refine = sub.add_parser("refine", help="refine a model's scores for one image with the dense CRF",
                            description="Reads IMAGE (any format scikit-image reads) and LOGITS (.npy, .npz or .pt, "
                                        "shape (C, h, w)), writes the refined labels as a palette PNG (VOC colours).")
    refine.add_argument("image", metavar="IMAGE")
    refine.add_argument("logits", metavar="LOGITS")
    refine.add_argument("-o", "--output", required=True, metavar="OUT.png", help="label map to write")
    refine.add_argument("--probs", action="store_true", help="LOGITS holds softmax probabilities, not logits")
    refine.add_argument("--preset", default="deeplab", choices=["deeplab", "pydensecrf"], help="CRF parameters")
    refine.add_argument("--params", metavar="JSON", help='override parameters, e.g. \'{"bi_weight": 5}\'')
    refine.add_argument("--iterations", type=int, help="mean-field iterations (default: the preset's)")
    refine.add_argument("--overlay", metavar="OVERLAY.png", help="also write the labels blended over the image")
    refine.add_argument("--save-probs", metavar="P.npy", help="also write the refined (C, H, W) probabilities")
    refine.set_defaults(func=_refine)

    ev = sub.add_parser("eval", help="score a folder of predicted label maps against the ground truth",
                        description="Pairs files by name stem; reads palette, 8-bit and 16-bit PNGs; prints the "
                                    "per-class table and means.")
    ev.add_argument("pred_dir", metavar="PRED_DIR")
    ev.add_argument("gt_dir", metavar="GT_DIR")
    ev.add_argument("--num-classes", type=int, required=True, help="number of classes K")
    ev.add_argument("--ignore-index", type=int, action="append", help="target label to ignore (repeatable), e.g. 255")
    ev.add_argument("--class-names", metavar="FILE", help="text file with one class name per line")
    ev.add_argument("--json", metavar="OUT", help="write all results as JSON")
    ev.add_argument("--plot", metavar="CM.png", help="write a confusion-matrix heatmap")
    ev.add_argument("--workers", type=int, default=4, help="threads reading images (default 4)")
    ev.add_argument("--drop-invalid", action="store_true",
                    help="count and skip labels outside [0, K) instead of stopping (default: an error)")
    ev.add_argument("--boundary", action="store_true", help="also report the dataset-level Boundary IoU")
    ev.set_defaults(func=_eval)

    bench = sub.add_parser("bench", help="a short benchmark summary on this machine",
                           description="The CRF against pydensecrf (if installed) and the confusion matrix against "
                                       "np.bincount; the full tables are in benchmarks/.")
    bench.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    bench.set_defaults(func=_bench)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except (UserError, ValueError, TypeError, OSError, MemoryError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"segpost {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"segpost {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
