"""Learning a CRF end to end: nn.DenseCRF's compatibilities and kernel weights trained on semi-synthetic scenes.

The demo's scenes (photo textures in irregular regions, an exact ground truth)
and its simulated network (coarse logits at output stride 8, blurry at edges,
noisy), upsampled to full resolution. The layer starts as DeepLab's Potts CRF
(smoothness 3/3, appearance 4/49/5) and learns its (C, C) compatibilities and
two kernel weights with Adam on the cross-entropy of its refined logits, on
training scenes only. Held-out scenes then compare, by mIoU and boundary F
(tolerance 2):

- the network alone (upsampled logits, argmax);
- crf_refine with DeepLab's parameters (Potts);
- crf_refine with the appearance kernel grid-searched on the training scenes
  by tune_crf (DeepLab v2's 128 settings);
- the learned layer.

Run:  python benchmarks/train_crf.py [--steps N]
"""
import argparse

import numpy as np
import torch

import segpost
from segpost.benchmarking import time_calls
from segpost.demo import make_scene, simulate_network
from segpost.metrics import SegMetrics, boundary_fscore
from segpost.nn import DenseCRF
from segpost.upsample import resize_logits

CLASSES, SIZE, ITERATIONS = 5, (192, 256), 5
TRAIN_SEEDS, HELD_OUT_SEEDS = range(0, 8), range(100, 106)


def scenes(seeds):
    out = []
    for seed in seeds:
        image, truth = make_scene(SIZE, seed=seed)
        logits = resize_logits(simulate_network(truth, CLASSES, seed=seed, noise=1.2), SIZE)
        out.append((image, truth, logits))
    return out


def scores(predictions, truths):
    metrics = SegMetrics(CLASSES)
    for pred, truth in zip(predictions, truths):
        metrics.update(pred, truth)
    fscore = np.mean([boundary_fscore(p, t, tolerance=2).fscore for p, t in zip(predictions, truths)])
    return metrics.compute().miou, fscore


def train(train_scenes, steps, seed=0):
    deeplab = segpost.CRFParams.deeplab()
    crf = DenseCRF(CLASSES, iterations=ITERATIONS, pos_xy=deeplab.pos_xy, bi_xy=deeplab.bi_xy, bi_rgb=deeplab.bi_rgb,
                   pos_weight=deeplab.pos_weight, bi_weight=deeplab.bi_weight)
    optimiser = torch.optim.Adam(crf.parameters(), lr=0.05)
    rng = np.random.default_rng(seed)
    tensors = [(torch.from_numpy(l)[None], torch.from_numpy(i).permute(2, 0, 1)[None], torch.from_numpy(t)[None])
               for i, t, l in train_scenes]
    losses = []
    for _ in range(steps):
        logits, image, truth = tensors[rng.integers(len(tensors))]
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(crf(logits, image), truth)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    return crf, losses


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    train_scenes, held_out = scenes(TRAIN_SEEDS), scenes(HELD_OUT_SEEDS)
    truths = [t for _, t, _ in held_out]

    timing = time_calls(lambda: train(train_scenes, args.steps), repeats=1, warmup=0)
    (crf, losses), train_s = timing.value, timing.median

    def tune():
        probs = [torch.softmax(torch.from_numpy(l), 0).numpy() for _, _, l in train_scenes]
        return segpost.tune_crf([i for i, _, _ in train_scenes], probs, [t for _, t, _ in train_scenes],
                                num_classes=CLASSES, progress=False)

    timing = time_calls(tune, repeats=1, warmup=0)
    (tuned, _), tune_s = timing.value, timing.median

    with torch.no_grad():
        learned = [crf(torch.from_numpy(l)[None], torch.from_numpy(i).permute(2, 0, 1)[None])[0].argmax(0).numpy()
                   for i, _, l in held_out]
    rows = [
        ["network alone (upsampled argmax)", *scores([l.argmax(0) for _, _, l in held_out], truths)],
        ["crf_refine, DeepLab's Potts parameters", *scores([segpost.crf_refine(i, l) for i, _, l in held_out], truths)],
        [f"crf_refine, tune_crf's best (bi {tuned.bi_weight}/{tuned.bi_xy}/{tuned.bi_rgb})",
         *scores([segpost.crf_refine(i, l, params=tuned) for i, _, l in held_out], truths)],
        [f"nn.DenseCRF learned ({args.steps} steps, {ITERATIONS} iterations)", *scores(learned, truths)],
    ]
    print(f"{len(TRAIN_SEEDS)} training and {len(HELD_OUT_SEEDS)} held-out scenes of {SIZE[0]}x{SIZE[1]}, "
          f"{CLASSES} classes; training {train_s:.0f} s (loss {np.mean(losses[:20]):.3f} -> "
          f"{np.mean(losses[-20:]):.3f}), tune_crf {tune_s:.0f} s")
    width = max(len(r[0]) for r in rows)
    print(f"| {'held-out scenes':<{width}} | mIoU % | boundary F % |")
    print(f"|{'-' * (width + 2)}|--------|--------------|")
    for name, miou, fscore in rows:
        print(f"| {name:<{width}} | {100 * miou:6.2f} | {100 * fscore:12.2f} |")
    print(f"learned kernel weights {[round(float(w), 2) for w in crf.kernel_weights.detach()]}")


if __name__ == "__main__":
    main()
