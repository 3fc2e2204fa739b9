"""CT-like phantoms with exact ground truth, for the volume tests, benchmarks and measurements.

A phantom is a body (soft tissue and fat in air) holding an organ (an
ellipsoid with a wavy surface) with a small lesion inside it, sampled on an
anisotropic grid (thick slices: ``spacing`` (3.0, 0.8, 0.8) mm by default),
in Hounsfield units with Gaussian noise. Its labels are 0 background, 1
organ, 2 lesion. :func:`simulate_volume_network` gives the coarse, noisy logits
a 3-D network might produce for it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Phantom", "ct_phantom", "simulate_volume_network"]

# Hounsfield units of the phantom's tissues (typical CT values; contrast-enhanced liver and a hypodense lesion).
AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
ORGAN_HU = 110.0
LESION_HU = 50.0


@dataclasses.dataclass(frozen=True)
class Phantom:
    """A phantom scan and its exact labels.

    Attributes
    ----------
    volume : (D, H, W) float32
        Intensities in Hounsfield units, with noise.
    labels : (D, H, W) uint8
        0 background, 1 organ, 2 lesion.
    spacing : tuple of float
        Voxel size (depth, height, width) in millimetres.
    """

    volume: np.ndarray
    labels: np.ndarray
    spacing: tuple


def _smooth_field(rng, shape, spacing, scale_mm):
    """A smooth random field of unit standard deviation, correlated over about ``scale_mm``."""
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.normal(size=shape), [scale_mm / s for s in spacing], mode="wrap")
    return field / max(field.std(), 1e-12)


def ct_phantom(shape=(64, 192, 192), *, spacing=(3.0, 0.8, 0.8), lesion_radius=6.0, noise=15.0, seed=0):
    """A CT-like phantom: body, organ and a small lesion, in Hounsfield units on an anisotropic grid.

    Parameters
    ----------
    shape : (int, int, int)
        (D, H, W) voxels.
    spacing : (float, float, float), keyword-only
        Voxel size in millimetres (slice thickness first).
    lesion_radius : float, keyword-only, default 6.0
        The lesion's radius in millimetres (about 4 slices across at 3 mm).
    noise : float, keyword-only, default 15.0
        Standard deviation of the Gaussian noise, in HU (a routine abdominal CT's).
    seed : int, keyword-only
        The organ's shape, the lesion's place and the noise.

    Returns
    -------
    Phantom

    Examples
    --------
    >>> from segpost._phantoms import ct_phantom
    >>> p = ct_phantom((16, 48, 48), seed=1)
    >>> p.volume.shape, p.labels.dtype, sorted(set(p.labels.ravel().tolist()))
    ((16, 48, 48), dtype('uint8'), [0, 1, 2])
    """
    rng = np.random.default_rng(seed)
    spacing = tuple(float(s) for s in spacing)
    extent = [n * s for n, s in zip(shape, spacing)]          # millimetres
    z, y, x = np.meshgrid(*[(np.arange(n) + 0.5) * s - e / 2 for n, s, e in zip(shape, spacing, extent)],
                          indexing="ij", sparse=True)
    # The body: an elliptic cylinder along z, 90% of the field of view in-plane; fat under its skin.
    body_r = (y / (0.45 * extent[1])) ** 2 + (x / (0.45 * extent[2])) ** 2
    body = np.broadcast_to(body_r <= 1, shape)
    fat = np.broadcast_to(body_r > 0.8**2, shape) & body
    # The organ: an ellipsoid, off-centre, half the body across, its surface made wavy by a smooth field.
    centre = np.array([0.0, -0.05 * extent[1], 0.08 * extent[2]]) + rng.uniform(-0.03, 0.03, 3) * np.array(extent)
    radii = np.array([0.38 * extent[0], 0.24 * extent[1], 0.2 * extent[2]])
    organ_r = np.sqrt(((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
                      + ((x - centre[2]) / radii[2]) ** 2)
    organ = (organ_r + 0.06 * _smooth_field(rng, shape, spacing, 15.0)) <= 1
    # The lesion: a sphere inside the organ, at 40-60% of its radius from the centre.
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    lesion_centre = centre + rng.uniform(0.4, 0.6) * direction * (radii - lesion_radius)
    lesion = ((z - lesion_centre[0]) ** 2 + (y - lesion_centre[1]) ** 2
              + (x - lesion_centre[2]) ** 2) <= lesion_radius**2
    lesion &= organ
    labels = np.zeros(shape, np.uint8)
    labels[organ] = 1
    labels[lesion] = 2
    volume = np.full(shape, AIR_HU, np.float32)
    volume[body] = SOFT_TISSUE_HU
    volume[fat] = FAT_HU
    # Organ texture (a few HU, smooth) and the lesion's slightly blurred edge, then scanner noise.
    volume[organ] = ORGAN_HU
    volume[lesion] = LESION_HU
    from scipy import ndimage

    volume = ndimage.gaussian_filter(volume, [0.6 / s for s in spacing])
    volume += 5.0 * _smooth_field(rng, shape, spacing, 5.0) * organ
    volume += rng.normal(scale=noise, size=shape)
    return Phantom(volume.astype(np.float32), labels, spacing)


def simulate_volume_network(labels, num_classes, *, stride=(1, 4, 4), noise=0.8, seed=0):
    """Coarse (C, d, h, w) logits like a 3-D network's: one-hot labels averaged over ``stride`` cells, plus noise.

    Blurry at edges (a small lesion is a fraction of a cell), noisy
    everywhere: what a network at that output stride gives, for the CRF to
    sharpen. ``resize_logits(logits, labels.shape)`` brings them back to the
    scan's grid.

    Parameters
    ----------
    labels : (D, H, W) integer array
    num_classes : int
    stride : (int, int, int), keyword-only
        The output stride per axis.
    noise : float, keyword-only
        Standard deviation of the Gaussian noise on each logit.
    seed : int, keyword-only

    Returns
    -------
    (C, ceil(D / sd), ceil(H / sh), ceil(W / sw)) float32

    Examples
    --------
    >>> import numpy as np
    >>> from segpost._phantoms import simulate_volume_network
    >>> simulate_volume_network(np.zeros((5, 16, 16), np.uint8), 3, stride=(1, 4, 4)).shape
    (3, 5, 4, 4)
    """
    labels = np.asarray(labels)
    strides = tuple(int(s) for s in stride)
    coarse_shape = tuple(-(-n // s) for n, s in zip(labels.shape, strides))
    padded = np.pad(labels, [(0, c * s - n) for c, s, n in zip(coarse_shape, strides, labels.shape)], mode="edge")
    cells = [v for c, s in zip(coarse_shape, strides) for v in (c, s)]
    onehot = np.stack([(padded == c) for c in range(num_classes)]).astype(np.float32)
    coarse = onehot.reshape(num_classes, *cells).mean(axis=(2, 4, 6))
    rng = np.random.default_rng(seed)
    return (4.0 * coarse + rng.normal(scale=noise, size=coarse.shape)).astype(np.float32)
