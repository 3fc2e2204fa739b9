"""The training layer: forward + backward of segpost.nn.DenseCRF against crf_refine's inference, in one process.

The same CRF everywhere: pydensecrf's parameters (smoothness 3/3, appearance
10/80/13), 5 mean-field iterations, 21 classes, on crops of scikit-image's
astronaut with random logits at full resolution. Timed in paired rounds:

- crf_refine: inference only, image by image (what a user runs after a model);
- nn.DenseCRF forward + backward on the compiled lattice (lattice="auto" on the CPU);
- nn.DenseCRF forward + backward on the pure-torch lattice (lattice="torch"), at the small size only.

Run:  python benchmarks/bench_nn_crf.py [--quick]
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table, time_calls  # noqa: E402

import segpost  # noqa: E402
from segpost.benchmarking import photo  # noqa: E402
from segpost.nn import DenseCRF  # noqa: E402

CLASSES, ITERATIONS = 21, 5
PARAMS = segpost.CRFParams.pydensecrf().replace(iterations=ITERATIONS)


def inputs(batch, size):
    image = photo(512)
    crops = np.stack([image[(37 * i) % 256:(37 * i) % 256 + size, (53 * i) % 256:(53 * i) % 256 + size]
                      for i in range(batch)])
    logits = torch.randn(batch, CLASSES, size, size, generator=torch.Generator().manual_seed(0))
    return crops, logits


def runners(batch, size, with_torch_lattice):
    crops, logits = inputs(batch, size)
    images = torch.from_numpy(crops).permute(0, 3, 1, 2)  # uint8 (B, 3, H, W)

    def refine():
        for crop, scores in zip(crops, logits.numpy()):
            segpost.crf_refine(crop, scores, params=PARAMS)

    def layer(lattice):
        crf = DenseCRF(CLASSES, iterations=ITERATIONS, pos_xy=PARAMS.pos_xy, bi_xy=PARAMS.bi_xy, bi_rgb=PARAMS.bi_rgb,
                       pos_weight=PARAMS.pos_weight, bi_weight=PARAMS.bi_weight, lattice=lattice)

        def run():
            x = logits.clone().requires_grad_()
            torch.nn.functional.cross_entropy(crf(x, images), logits.argmax(1)).backward()
        return run

    out = {"crf_refine (inference)": refine, "nn.DenseCRF fwd+bwd (compiled lattice)": layer("auto")}
    if with_torch_lattice:
        out["nn.DenseCRF fwd+bwd (torch lattice)"] = layer("torch")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    rows = []
    for batch, size, with_torch, repeats in ((1, 128, True, 3), (4, 256, False, 3)):
        fns = runners(batch, size, with_torch)
        # warm-up: the smoothness lattice's cache, the allocator
        times = {name: t.median for name, t in time_calls(fns, repeats=1 if args.quick else repeats, warmup=1).items()}
        base = times["crf_refine (inference)"]
        for name, t in times.items():
            rows.append([f"({batch}, {CLASSES}, {size}, {size})", name, f"{t * 1e3:.0f}", f"{t / base:.1f}x"])
    print(f"{ITERATIONS} iterations, pydensecrf's parameters, {segpost.get_num_threads()} threads, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print_table(["logits", "what", "median ms", "vs crf_refine"], rows)


if __name__ == "__main__":
    main()
