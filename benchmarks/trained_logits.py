"""A small segmentation network trained here, on the CPU, and its logits on held-out scenes.

The input ``bench_pruning.py`` runs the dense CRF on: what a trained network
gives, not hand-set gaps. Scenes are the demo's (``segpost.demo.make_scene``:
irregular regions with an exact label map), cut into quadrants (up to 20
regions), each region given one of a few classes present in the scene. A
class looks like one of 15 scikit-image photos (its texture) under one of
several colour transforms, so that 21 or 150 classes are told apart by
texture and colour, as a network must. The network is DeepLab-shaped and
small: three stride-2 convolutions (output stride 8), dilated convolutions
for context, a 1x1 classifier; cross-entropy on its logits upsampled
bilinearly to the label map, as DeepLab trains. A few minutes per network on
two cores.

The trained weights and the held-out logits are cached under
``benchmarks/_cache/`` (git-ignored); delete it to retrain. Seeds are fixed,
so a retrain gives the same kind of network (torch's CPU kernels are not
bit-reproducible across machines).

Run:  python benchmarks/trained_logits.py [--classes 21 150]   (trains what is not cached, prints statistics)
"""
import argparse
import os
import time

import numpy as np

CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_cache")
TEXTURES = ["astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
            "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket", "cell"]
PRESENT = {21: 4, 150: 12}  # classes per scene: VOC images show a few, ADE20K's about a dozen
TRAIN_SIZE, TEST_SIZE, STRIDE = 128, 512, 8
TRAIN_SCENES, TRAIN_STEPS, BATCH = 400, 2500, 8
HELD_OUT_SEEDS = range(10_000, 10_006)

_texture_cache = {}


def texture(name):
    """A scikit-image photo as (>= 512, >= 512, 3) uint8 (gray repeated, small ones enlarged)."""
    if name not in _texture_cache:
        from skimage import data
        from skimage.transform import resize

        image = getattr(data, name)()
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        image = image[..., :3]
        if min(image.shape[:2]) < TEST_SIZE:
            scale = TEST_SIZE / min(image.shape[:2])
            shape = (int(np.ceil(image.shape[0] * scale)), int(np.ceil(image.shape[1] * scale)))
            image = (resize(image, shape, order=1, anti_aliasing=True) * 255).astype(np.uint8)
        _texture_cache[name] = np.ascontiguousarray(image)
    return _texture_cache[name]


def colour_transform(cls):
    """Class ``cls``'s 3x3 colour mixing: identity for the first 15 classes, a fixed random tint after."""
    if cls < len(TEXTURES):
        return np.eye(3)
    rng = np.random.default_rng(cls)
    return rng.permutation(np.eye(3)) * rng.uniform(0.35, 1.25, size=3)[:, None]


def appearance(cls, size, rng):
    """A (size, size, 3) float32 patch of class ``cls``: its texture at a random offset, its colours."""
    tex = texture(TEXTURES[cls % len(TEXTURES)])
    y, x = rng.integers(0, tex.shape[0] - size + 1), rng.integers(0, tex.shape[1] - size + 1)
    patch = tex[y:y + size, x:x + size].astype(np.float32) @ colour_transform(cls).T.astype(np.float32)
    return np.clip(patch, 0, 255)


def scene(size, classes, seed):
    """(image (size, size, 3) uint8, labels (size, size) int64) with PRESENT[classes] classes."""
    from segpost.demo import make_scene

    _, regions = make_scene((size, size), seed=seed)
    quadrant = (np.arange(size)[:, None] >= size // 2) * 2 + (np.arange(size)[None, :] >= size // 2)
    rng = np.random.default_rng(seed)
    present = PRESENT[classes]
    ids = rng.choice(classes, size=present, replace=False)
    region_class = ids[rng.permutation(np.arange(20) % present)]  # every present class gets a region
    truth = region_class[regions * 4 + quadrant]
    image = np.zeros((size, size, 3), np.float32)
    for c in ids:
        mask = truth == c
        image[mask] = appearance(int(c), size, rng)[mask]
    return image.astype(np.uint8), truth


def network(classes):
    import torch.nn as nn

    def block(cin, cout, stride=1, dilation=1):
        return [nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(*block(3, 32, 2), *block(32, 48, 2), *block(48, 64, 2), *block(64, 64, dilation=2),
                         *block(64, 64, dilation=4), nn.Conv2d(64, classes, 1))


def normalise(images):
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return (x - 127.5) / 64.0


def train(classes, *, steps=TRAIN_STEPS, log=print):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    start = time.perf_counter()
    scenes = [scene(TRAIN_SIZE, classes, seed) for seed in range(TRAIN_SCENES)]
    images = np.stack([s[0] for s in scenes])
    truths = torch.from_numpy(np.stack([s[1] for s in scenes]))
    log(f"  {classes} classes: {TRAIN_SCENES} training scenes in {time.perf_counter() - start:.0f} s")
    net = network(classes)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
    rng = np.random.default_rng(0)
    x_all = normalise(images)
    for step in range(steps):
        batch = rng.choice(TRAIN_SCENES, size=BATCH, replace=False)
        x, y = x_all[batch], truths[batch]
        if rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        logits = F.interpolate(net(x), size=y.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"  step {step}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)")
    return net.eval()


def held_out(classes, *, log=print):
    """[(image (512, 512, 3) uint8, truth (512, 512), logits (C, 64, 64) float32)], trained and cached."""
    import torch

    os.makedirs(CACHE, exist_ok=True)
    path = os.path.join(CACHE, f"held_out_{classes}.npz")
    if not os.path.exists(path):
        weights = os.path.join(CACHE, f"net_{classes}.pt")
        if os.path.exists(weights):
            net = network(classes)
            net.load_state_dict(torch.load(weights))
            net.eval()
        else:
            log(f"training the {classes}-class network (cached in {CACHE}) ...")
            net = train(classes, log=log)
            torch.save(net.state_dict(), weights)
        scenes = [scene(TEST_SIZE, classes, seed) for seed in HELD_OUT_SEEDS]
        with torch.no_grad():
            logits = net(normalise(np.stack([s[0] for s in scenes]))).numpy().astype(np.float32)
        np.savez_compressed(path, images=np.stack([s[0] for s in scenes]), truths=np.stack([s[1] for s in scenes]),
                            logits=logits)
    data = np.load(path)
    return list(zip(data["images"], data["truths"], data["logits"]))


def gap_statistics(logits, truth=None):
    """Median and 5th percentile of (top logit - absent class's logit) over every point and absent class,
    at the network's resolution. A class is absent from an image when it is no point's top."""
    top = logits.max(axis=0)
    absent = np.setdiff1d(np.arange(len(logits)), np.unique(logits.argmax(axis=0)))
    gaps = (top[None] - logits[absent]).ravel()
    return float(np.median(gaps)), float(np.percentile(gaps, 5)), len(logits) - len(absent)


def pixel_accuracy(logits, truth):
    from segpost import resize_logits

    return float((resize_logits(logits, truth.shape).argmax(axis=0) == truth).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[21, 150], choices=[21, 150])
    args = parser.parse_args()
    for classes in args.classes:
        items = held_out(classes)
        for image, truth, logits in items:
            median, p5, shown = gap_statistics(logits)
            print(f"{classes} classes: {shown} classes are some point's top; absent classes' gap to the top: "
                  f"median {median:.1f}, 5th percentile {p5:.1f}; pixel accuracy {100 * pixel_accuracy(logits, truth):.1f}%")


if __name__ == "__main__":
    main()
