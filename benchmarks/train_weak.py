"""Weak supervision with the dense CRF loss: a small network trained from scribbles, with and without it.

The demo's scenes (scikit-image photo textures in irregular regions, an exact
label map; ``segpost.demo.make_scene``) at 128x128, five classes. Scribbles
are a few strokes per region: the skeleton of each connected region after an
erosion by 3 pixels (what an annotator's stroke down the middle of a region
looks like), about 5% of the pixels; everything else is unlabelled (255).
The same small fully convolutional network (output stride 4, bilinear
upsampling; 61k parameters), the same seeds and steps, is trained three
ways and scored by mIoU on held-out scenes:

- scribbles: partial cross-entropy (unlabelled pixels ignored) alone;
- scribbles + dense CRF loss: plus ``segpost.nn.DenseCRFLoss`` (Tang et al. 2018);
- full supervision: cross-entropy on the complete label maps (the upper bound).

The CRF loss's weight. rloss's defaults (weight 2e-9, sigma_xy 100, scale
0.5) are for VOC's ~500x500 images with a mean-reduced cross-entropy over
~3% labelled pixels. The loss is a sum over pixel pairs: each pixel's
gradient grows with its number of kernel neighbours (~ sigma_xy^2 at the
loss's resolution), while a labelled pixel's cross-entropy gradient is 1 /
(number of labelled pixels) (~ image area). Keeping their ratio at 128x128
scales sigma_xy with the image (100 * 128 / 512 = 25) and the weight by
(512 / 128)^4 = 256: 2e-9 * 256 = 5e-7. sigma_rgb stays 15.

``--cost`` instead measures what the loss and its gradient add to one training
step of segmentation_models_pytorch's resnet18 U-Net (encoder_weights=None,
batch 2, 128x128, CPU, SGD): the two steps alternate in one process,
medians and their ratio. ``--threads 1`` runs segpost's lattice on one thread:
on 2 cores its thread pool and torch's OpenMP threads otherwise contend.

Run:  python benchmarks/train_weak.py [--steps N] [--cost]
"""
import argparse

import numpy as np
import torch
import torch.nn.functional as F

from segpost.demo import make_scene
from segpost.metrics import SegMetrics
from segpost.nn import DenseCRFLoss

from _common import print_table, time_calls

CLASSES, SIZE, IGNORE = 5, (128, 128), 255
TRAIN_SEEDS, HELD_OUT_SEEDS = range(0, 24), range(100, 112)
CRF_LOSS = dict(weight=5e-7, sigma_rgb=15.0, sigma_xy=25.0, scale_factor=0.5)


def scribbles(labels, *, erosion=3):
    """Unlabelled (255) everywhere but a stroke down the middle of each connected region."""
    from scipy.ndimage import binary_erosion
    from skimage.measure import label as connected
    from skimage.morphology import disk, skeletonize

    out = np.full(labels.shape, IGNORE, np.int64)
    for c in range(CLASSES):
        regions = connected(labels == c)
        for r in range(1, regions.max() + 1):
            core = binary_erosion(regions == r, structure=disk(erosion))
            out[skeletonize(core)] = c
    return out


def scenes(seeds):
    images, truths = zip(*(make_scene(SIZE, seed=seed) for seed in seeds))
    images = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # uint8 (N, 3, H, W)
    truths = torch.from_numpy(np.stack(truths))
    return images, truths, torch.from_numpy(np.stack([scribbles(t) for t in truths.numpy()]))


def small_network():
    def block(cin, cout, **options):
        return [torch.nn.Conv2d(cin, cout, 3, padding=options.get("dilation", 1), bias=False, **options),
                torch.nn.BatchNorm2d(cout), torch.nn.ReLU(inplace=True)]

    return torch.nn.Sequential(
        *block(3, 16), *block(16, 32, stride=2), *block(32, 48, stride=2), *block(48, 48, dilation=2),
        *block(48, 48, dilation=4), torch.nn.Conv2d(48, CLASSES, 1),
        torch.nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False))


def normalise(images):
    return images.float() / 255 - 0.5


def train(data, mode, steps, *, batch=4, seed=0):
    images, truths, strokes = data
    torch.manual_seed(seed)
    net = small_network()
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    crf_loss = DenseCRFLoss(**CRF_LOSS)
    rng = np.random.default_rng(seed)
    roi = torch.ones(batch, *SIZE)
    net.train()
    for _ in range(steps):
        index = torch.from_numpy(rng.choice(len(images), batch, replace=False))
        logits = net(normalise(images[index]))
        target = truths[index] if mode == "full" else strokes[index]
        loss = F.cross_entropy(logits, target, ignore_index=IGNORE)
        if mode == "crf":
            loss = loss + crf_loss(images[index], torch.softmax(logits, 1), roi)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return net


def miou(net, data):
    images, truths, _ = data
    net.eval()
    metrics = SegMetrics(CLASSES)
    with torch.no_grad():
        for image, truth in zip(images.split(4), truths.split(4)):
            metrics.update(net(normalise(image)), truth)
    return metrics.compute().miou


def cost(repeats, threads):
    import os
    import sys

    import segpost

    if threads:
        segpost.set_num_threads(threads)

    # The tests' way of importing torchvision (which smp imports) next to a CPU-only torch.
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from conftest import _import_torchvision_without_its_c_ops

    _import_torchvision_without_its_c_ops()
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    net = smp.Unet("resnet18", encoder_weights=None, classes=CLASSES)
    optimiser = torch.optim.SGD(net.parameters(), lr=1e-3)
    images, truths, strokes = scenes(range(2))
    x, roi = normalise(images), torch.ones(2, *SIZE)
    crf_loss = DenseCRFLoss(**CRF_LOSS)

    def step(with_crf_loss):
        optimiser.zero_grad()
        logits = net(x)
        loss = F.cross_entropy(logits, strokes, ignore_index=IGNORE)
        if with_crf_loss:
            loss = loss + crf_loss(images, torch.softmax(logits, 1), roi)
        loss.backward()
        optimiser.step()

    times = {name: t.median for name, t in time_calls({"partial cross-entropy": lambda: step(False),
                                                       "+ DenseCRFLoss": lambda: step(True)},
                                                      repeats=repeats, warmup=3).items()}
    base, with_loss = times["partial cross-entropy"], times["+ DenseCRFLoss"]
    print(f"smp resnet18 U-Net training step, batch 2, 128x128, CPU, torch {torch.get_num_threads()} threads, "
          f"segpost {segpost.get_num_threads()}, {repeats} paired rounds (medians):")
    print_table(["step", "ms", "ratio"], [["partial cross-entropy", f"{1e3 * base:.1f}", "1.000"],
                                          ["+ DenseCRFLoss", f"{1e3 * with_loss:.1f}", f"{with_loss / base:.3f}"]])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--cost", action="store_true", help="measure the loss's cost in a U-Net step instead")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="segpost's threads for --cost (default: its own)")
    args = parser.parse_args()
    if args.cost:
        cost(args.repeats, args.threads)
        return
    train_data, held_out = scenes(TRAIN_SEEDS), scenes(HELD_OUT_SEEDS)
    labelled = float((train_data[2] != IGNORE).float().mean())
    rows = []
    for mode, name in (("scribbles", "scribbles: partial cross-entropy"),
                       ("crf", "scribbles + DenseCRFLoss"), ("full", "full supervision")):
        timing = time_calls(lambda: train(train_data, mode, args.steps), repeats=1, warmup=0)
        net, seconds = timing.value, timing.median
        rows.append([name, f"{100 * miou(net, held_out):.1f}", f"{seconds:.0f}"])
    print(f"{len(TRAIN_SEEDS)} training / {len(HELD_OUT_SEEDS)} held-out scenes of {SIZE[0]}x{SIZE[1]}, "
          f"{CLASSES} classes, scribbles label {100 * labelled:.1f}% of the pixels; {args.steps} Adam steps of 4 "
          f"images; CRF loss {CRF_LOSS}")
    print_table(["training", "held-out mIoU %", "train s"], rows)


if __name__ == "__main__":
    main()
