"""How many 8-label blocks a block-sparse mean field would touch on a trained network's 150-class logits.

The dense mean field moves whole blocks of 8 labels per vector instruction;
per-pixel label sets with scalar slots lost to it (docs/performance.md, "Per-pixel
label sets"). A block-sparse kernel would keep, per pixel and per lattice
vertex, only the blocks holding a label within ``G`` logits of the pixel's
best, after renumbering the labels so that labels that occur together share
blocks. Its work is bounded below by the blocks a pixel's own set spans and
grows with the union a vertex gathers (its pixels' sets): this script counts
both, before writing such a kernel.

Labels are grouped greedily: the most frequent remaining label starts a block,
then the 7 remaining labels that co-occur most with the block join it. A
vertex's union is approximated by the union over a square window of pixels
(9x9: the smoothness kernel's reach at 3 px; 41x41: the appearance kernel's
vertices, which gather pixels of one colour from tens of pixels around).

Run:  python benchmarks/label_blocks.py [--images 2] [--gaps 6 8 10]
"""
import argparse
import os
import sys

import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.dirname(__file__))
import segpost  # noqa: E402
from _common import print_table  # noqa: E402
from trained_logits import held_out  # noqa: E402

BLOCK = 8


def label_sets(logits, size, gap):
    """(C, N) bool: the labels within ``gap`` logits of each pixel's best, on the upsampled logits."""
    scores = segpost.resize_logits(logits, size)
    return (scores.max(axis=0, keepdims=True) - scores <= gap).reshape(scores.shape[0], -1)


def greedy_blocks(sets):
    """(C,) block of each label: blocks of ``BLOCK`` labels that occur together (greedy, by co-occurrence)."""
    together = sets.astype(np.float32) @ sets.T.astype(np.float32)
    left, block_of, block = set(range(len(sets))), np.empty(len(sets), np.int64), 0
    while left:
        members = [max(left, key=lambda label: together[label, label])]
        left.discard(members[0])
        while len(members) < BLOCK and left:
            best = max(left, key=lambda label: together[label, members].sum())
            members.append(best)
            left.discard(best)
        block_of[members] = block
        block += 1
    return block_of


def blocks_per_pixel(sets, block_of, size, window=1):
    """Mean number of blocks a pixel's set (or the union over a ``window`` square around it) spans."""
    count = np.zeros(sets.shape[1])
    for block in range(block_of.max() + 1):
        present = sets[block_of == block].any(axis=0).reshape(size)
        if window > 1:
            present = ndimage.maximum_filter(present, size=window)
        count += present.ravel()
    return float(count.mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--gaps", type=float, nargs="+", default=(6, 8, 10))
    args = parser.parse_args()
    rows = []
    for index, (image, _, logits) in enumerate(held_out(150)[: args.images]):
        size = image.shape[:2]
        for gap in args.gaps:
            sets = label_sets(logits, size, gap)
            grouped = greedy_blocks(sets)
            in_order = np.arange(len(sets)) // BLOCK
            rows.append([index, f"{gap:g}", f"{sets.sum(axis=0).mean():.1f}",
                         f"{blocks_per_pixel(sets, in_order, size):.2f}",
                         f"{blocks_per_pixel(sets, grouped, size):.2f}",
                         f"{blocks_per_pixel(sets, grouped, size, 9):.2f}",
                         f"{blocks_per_pixel(sets, grouped, size, 41):.2f}", grouped.max() + 1])
    print("150-class trained network, held-out images (512x512): blocks of 8 labels within G logits of the top")
    print_table(["image", "G", "labels / pixel", "blocks / pixel (label order)", "blocks / pixel (grouped)",
                 "grouped, 9x9 union", "grouped, 41x41 union", "blocks in all"], rows)


if __name__ == "__main__":
    main()
