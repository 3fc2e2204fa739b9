"""crf_refine's label pruning on a trained network's logits: pydensecrf, unpruned, "exact" and default pruning.

The logits are those of small networks trained here on the CPU
(``trained_logits.py``: the demo's scenes, 21 and 150 output classes;
trained on first use, then cached in ``benchmarks/_cache/``), on held-out
512x512 scenes at output stride 8. Beside the timings: the logits' statistics
(median and 5th percentile of the gap between the top logit and each absent
class's, at the network's resolution), the labels the pruned CRF kept, and
its agreement with the full CRF (labels, largest marginal difference).
DeepLab preset (``CRFParams()``), 10 iterations, segpost on the machine's
threads, pydensecrf single-threaded, all four timed in paired rounds in one
process (the order rotating), medians.

Run:  python benchmarks/bench_pruning.py [--repeats N] [--images N]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table, time_calls  # noqa: E402
from trained_logits import gap_statistics, held_out  # noqa: E402

import segpost  # noqa: E402
from segpost.benchmarking import pydensecrf_labels  # noqa: E402


def compare(classes, index, image, logits, repeats, params):
    runs = {
        "pydensecrf": lambda: pydensecrf_labels(image, logits, params),
        "unpruned": lambda: segpost.crf_refine(image, logits, params=params, prune=False),
        "exact": lambda: segpost.crf_refine(image, logits, params=params, prune="exact"),
        "pruned": lambda: segpost.crf_refine(image, logits, params=params),
    }
    full_labels, full_q = segpost.crf_refine(image, logits, params=params, prune=False, return_probs=True)
    labels, q = segpost.crf_refine(image, logits, params=params, return_probs=True)
    kept = int(q.reshape(classes, -1).any(axis=1).sum())
    ms = {name: 1e3 * t.median for name, t in time_calls(runs, repeats=repeats).items()}
    median, p5, shown = gap_statistics(logits)
    return [f"{classes}, #{index}", shown, f"{median:.1f} / {p5:.1f}", f"{ms['pydensecrf']:.0f}",
            f"{ms['unpruned']:.0f}", f"{ms['exact']:.0f}", f"{ms['pruned']:.0f}", kept,
            f"{ms['pydensecrf'] / ms['pruned']:.1f}x", f"{ms['unpruned'] / ms['pruned']:.2f}x",
            f"{100 * (labels == full_labels).mean():.4f}%", f"{np.abs(q - full_q).max():.1e}"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=2, help="held-out images per class count")
    args = parser.parse_args()
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        sys.exit("pydensecrf is needed for the comparison: make install (or pip install pydensecrf2)")
    params = segpost.CRFParams().replace(iterations=10)
    rows = []
    for classes in (21, 150):
        for index, (image, _, logits) in enumerate(held_out(classes)[: args.images]):
            rows.append(compare(classes, index, np.ascontiguousarray(image), logits, args.repeats, params))
    print(f"Trained networks' logits, 512x512, DeepLab preset, 10 iterations, {segpost.get_num_threads()} threads, "
          f"median of {args.repeats} paired rounds")
    print_table(["classes, image", "classes some pixel's top", "absent gap median / 5%", "pydensecrf ms",
                 "unpruned ms", "exact ms", "pruned ms", "labels kept", "vs pydensecrf", "vs unpruned",
                 "same labels as unpruned", "max |dq|"], rows)


if __name__ == "__main__":
    main()
