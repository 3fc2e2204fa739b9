"""Pictures of label maps: colours, overlays, confusion matrices, side-by-side figures.

matplotlib is needed only for the figure helpers (``pip install segpost[viz]``).
"""
from __future__ import annotations

import numpy as np

from ._validation import is_torch_tensor

__all__ = ["voc_palette", "colorize", "overlay", "plot_confusion_matrix", "side_by_side"]


def voc_palette(num_colors=256):
    """The PASCAL VOC colour map, as VOC's palette PNGs carry it.

    Parameters
    ----------
    num_colors : int
        Colours to return (default 256; class 255, VOC's void, is light grey-ish).

    Returns
    -------
    (num_colors, 3) uint8

    Examples
    --------
    >>> from segpost.viz import voc_palette
    >>> voc_palette()[:3].tolist()
    [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    """
    palette = np.zeros((num_colors, 3), np.uint8)
    for label in range(num_colors):
        c, r, g, b = label, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[label] = (r, g, b)
    return palette


def _labels_array(labels):
    arr = labels.detach().cpu().numpy() if is_torch_tensor(labels) else np.asarray(labels)
    if arr.ndim != 2 or arr.dtype.kind not in "biu":
        raise ValueError(f"labels must be an (H, W) integer map, got shape {arr.shape} and dtype {arr.dtype}")
    return arr


def colorize(labels, palette="voc"):
    """An (H, W, 3) uint8 picture of a label map.

    Parameters
    ----------
    labels : (H, W) integer array_like or torch.Tensor
    palette : "voc" or (N, 3) array_like
        Labels beyond the palette wrap around; negative ones are black.

    Returns
    -------
    (H, W, 3) uint8

    Raises
    ------
    ValueError
        If ``labels`` is not an (H, W) integer map or the palette is not (N, 3).

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.viz import colorize
    >>> colorize(np.array([[0, 1], [2, 3]])).shape
    (2, 2, 3)
    """
    arr = _labels_array(labels)
    colours = voc_palette() if isinstance(palette, str) and palette == "voc" else np.asarray(palette, np.uint8)
    if colours.ndim != 2 or colours.shape[1] != 3 or len(colours) == 0:
        raise ValueError("palette must be 'voc' or an (N, 3) array of colours")
    index = np.where(arr < 0, 0, arr.astype(np.int64) % len(colours))
    out = colours[index]
    out[arr < 0] = 0
    return out


def overlay(image, labels, alpha=0.5, palette="voc"):
    """The image with the coloured label map blended on top.

    Parameters
    ----------
    image : (H, W) or (H, W, 3) array_like
        uint8, or floats in [0, 1].
    labels : (H, W) integer array_like or torch.Tensor
    alpha : float
        The labels' weight, in [0, 1].
    palette : "voc" or (N, 3) array_like

    Returns
    -------
    (H, W, 3) uint8

    Raises
    ------
    ValueError
        If the sizes differ or ``alpha`` is outside [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.viz import overlay
    >>> image = np.full((2, 2, 3), 200, np.uint8)
    >>> overlay(image, np.array([[0, 1], [1, 0]]), alpha=0.5)[0, 1].tolist()  # VOC class 1 is (128, 0, 0)
    [164, 100, 100]
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.dtype.kind == "f":
        img = np.clip(img * 255, 0, 255)
    if img.shape[:2] != _labels_array(labels).shape:
        raise ValueError(f"image {img.shape[:2]} and labels {_labels_array(labels).shape} differ in size")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    blend = (1 - alpha) * img[..., :3].astype(np.float32) + alpha * colorize(labels, palette).astype(np.float32)
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("segpost.viz figures need matplotlib: pip install 'segpost[viz]'") from exc
    return plt


def plot_confusion_matrix(result, *, class_names=None, normalize=True, ax=None):
    """Heatmap of a confusion matrix, rows normalised to recall (needs matplotlib: ``segpost[viz]``).

    Parameters
    ----------
    result : SegMetricsResult or (K, K) array_like
    class_names : sequence of str, keyword-only, optional
        Default the result's names, or the indices.
    normalize : bool, keyword-only
        Divide each row by its total (recall on the diagonal).
    ax : matplotlib Axes, keyword-only, optional
        Draw into it instead of a new figure.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.viz import plot_confusion_matrix
    >>> figure = plot_confusion_matrix(np.array([[5, 1], [2, 8]]), class_names=["sky", "road"])
    >>> figure.axes[0].get_xlabel()
    'prediction'
    """
    plt = _pyplot()
    cm = np.asarray(getattr(result, "confusion", result), np.float64)
    names = class_names or getattr(result, "class_names", None) or [str(i) for i in range(len(cm))]
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    if ax is None:
        size = max(4, 0.35 * len(cm) + 2)
        fig, ax = plt.subplots(figsize=(size, size))
    else:
        fig = ax.figure
    im = ax.imshow(shown, cmap="viridis", vmin=0, vmax=1 if normalize else None)
    ax.set_xlabel("prediction")
    ax.set_ylabel("target")
    if len(cm) <= 40:
        ax.set_xticks(range(len(cm)), names, rotation=90)
        ax.set_yticks(range(len(cm)), names)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def side_by_side(panels, titles, *, errors=None, path=None, suptitle=None):
    """A row of pictures with titles, errors painted red (needs matplotlib: ``segpost[viz]``).

    Parameters
    ----------
    panels : sequence of (H, W, 3) uint8 arrays
    titles : sequence of str
        One per panel.
    errors : sequence of (H, W) bool arrays or None, keyword-only, optional
        Pixels to paint red in each panel.
    path : str or Path, keyword-only, optional
        Also save the figure there.
    suptitle : str, keyword-only, optional

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If panels and titles differ in number.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.viz import side_by_side
    >>> picture = np.zeros((4, 4, 3), np.uint8)
    >>> figure = side_by_side([picture, picture], ["before", "after"], errors=[None, picture[..., 0] == 0])
    >>> len(figure.axes)
    2
    """
    plt = _pyplot()
    if len(panels) != len(titles):
        raise ValueError("panels and titles must have the same length")
    errors = errors or [None] * len(panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, panel, title, err in zip(np.atleast_1d(axes), panels, titles, errors):
        shown = np.array(panel, copy=True)
        if err is not None:
            shown = shown.copy()
            shown[np.asarray(err, bool)] = (255, 0, 0)
        ax.imshow(shown)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
