"""Brute-force reference implementations the fast kernels are tested against."""
import numpy as np


def gaussian_affinity(features):
    """Exact (N, N) matrix exp(-|f_i - f_j|^2 / 2), in float64."""
    f = np.asarray(features, np.float64)
    sq = ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1)
    return np.exp(-0.5 * sq)


def exact_gaussian_filter(features, values, *, normalize):
    """O(N^2) Gaussian filter: sum_j k(f_i, f_j) v_j, optionally divided by sum_j k(f_i, f_j)."""
    w = gaussian_affinity(features)
    v = np.asarray(values, np.float64).reshape(len(w), -1)
    out = w @ v
    if normalize:
        out /= w.sum(axis=1, keepdims=True)
    return out.reshape(np.shape(values))


def exact_bilateral_filter(image, sigma_spatial, sigma_color):
    """O((HW)^2) bilateral filter of an (H, W, C) image."""
    img = np.asarray(image, np.float64)
    h, w, c = img.shape
    yy, xx = np.mgrid[0:h, 0:w]
    features = np.concatenate(
        [np.stack([yy.ravel(), xx.ravel()], 1) / sigma_spatial, img.reshape(-1, c) / sigma_color], 1
    )
    return exact_gaussian_filter(features, img.reshape(-1, c), normalize=True).reshape(h, w, c)
