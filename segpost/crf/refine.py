"""``crf_refine``: sharpen any model's output with a dense CRF in one call."""
from __future__ import annotations

import dataclasses
import warnings
import numbers

import numpy as np

from .._validation import (
    FLOAT32_MAX, MAX_CRF_SCORE, MIN_BANDWIDTH, channels_last, check_finite, intensity_scale, is_torch_tensor,
    like_input, on_device, refuse_probabilities_as_logits, to_numpy, two_class_scores,
)
from ..upsample import _resize_points
from .model import DenseCRF, _check_iterations, check_memory, padded_labels

__all__ = ["CRFParams", "crf_refine"]

# pydensecrf's unary_from_softmax clips probabilities here before the log.
PROBABILITY_CLIP = 1e-5
# Logits may be coarser than the image by any output stride, but both axes by
# about the same factor: a larger mismatch means the wrong image or transposed logits.
_MAX_ASPECT_MISMATCH = 1.5


@dataclasses.dataclass(frozen=True)
class CRFParams:
    """Parameters of the two-kernel dense CRF used by :func:`crf_refine`.

    Names follow DeepLab's released script (Pos_W, Pos_XY, Bi_W, Bi_XY,
    Bi_RGB). Energies use Potts compatibilities and symmetric normalisation.

    Parameters
    ----------
    pos_weight : float, default 3
        Weight w2 of the smoothness kernel ``exp(-|p_i - p_j|^2 / (2 pos_xy^2))``:
        removes small isolated regions.
    pos_xy : float, default 3
        Its spatial bandwidth in pixels.
    bi_weight : float, default 4
        Weight w1 of the appearance kernel
        ``exp(-|p_i - p_j|^2 / (2 bi_xy^2) - |I_i - I_j|^2 / (2 bi_rgb^2))``:
        nearby pixels of similar colour take the same label.
    bi_xy : float, default 49
        Its spatial bandwidth in pixels.
    bi_rgb : float, default 5
        Its colour bandwidth in 0..255 intensity units.
    iterations : int, default 10
        Mean-field iterations (5 to 10 are usually converged).

    Notes
    -----
    How to choose them: keep ``pos_weight = pos_xy = 3`` (DeepLab fixed them);
    tune ``bi_weight`` in [3, 6], ``bi_xy`` in 30..100 and ``bi_rgb`` in [3, 6]
    on a few held-out images (DeepLab v2's search ranges; ``segpost.tune_crf``
    automates it). Larger ``bi_xy`` lets colour evidence travel further;
    smaller ``bi_rgb`` makes edges stricter; larger ``bi_weight`` trusts the
    image more than the model. Presets: :meth:`deeplab` (the defaults) and
    :meth:`pydensecrf` (its README: pos 3/3, bilateral weight 10, sxy 80,
    srgb 13, 5 iterations) - the latter smooths much more.

    Examples
    --------
    >>> from segpost import CRFParams
    >>> CRFParams.pydensecrf().bi_xy
    80.0
    >>> CRFParams(bi_weight=5).iterations
    10
    """

    pos_weight: float = 3.0
    pos_xy: float = 3.0
    bi_weight: float = 4.0
    bi_xy: float = 49.0
    bi_rgb: float = 5.0
    iterations: int = 10

    def __post_init__(self):
        for name in ("pos_weight", "bi_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("pos_xy", "bi_xy", "bi_rgb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite bandwidth, got {value!r}")
            if value < MIN_BANDWIDTH:
                raise ValueError(f"{name} must be at least {MIN_BANDWIDTH:g} (features are divided by it), got "
                                 f"{value!r}")
            object.__setattr__(self, name, float(value))
        object.__setattr__(self, "iterations", _check_iterations(self.iterations))

    @classmethod
    def deeplab(cls) -> "CRFParams":
        """DeepLab's released values: Pos_W 3, Pos_XY 3, Bi_W 4, Bi_XY 49, Bi_RGB 5, 10 iterations."""
        return cls()

    @classmethod
    def pydensecrf(cls) -> "CRFParams":
        """pydensecrf's README values: Gaussian 3/3, bilateral weight 10, sxy 80, srgb 13, 5 iterations."""
        return cls(pos_weight=3, pos_xy=3, bi_weight=10, bi_xy=80, bi_rgb=13, iterations=5)

    @classmethod
    def coerce(cls, value) -> "CRFParams":
        """A CRFParams from None (DeepLab's), a preset name, a dict of fields, or a CRFParams."""
        if value is None:
            return cls.deeplab()
        if isinstance(value, CRFParams):
            return value
        if isinstance(value, str):
            presets = {"deeplab": cls.deeplab, "pydensecrf": cls.pydensecrf}
            if value not in presets:
                raise ValueError(f"unknown CRF preset {value!r}; choose 'deeplab' or 'pydensecrf'")
            return presets[value]()
        if isinstance(value, dict):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ValueError(f"unknown CRF parameter(s) {sorted(unknown)}")
            return cls(**value)
        raise TypeError(f"params must be a CRFParams, a preset name or a dict, got {type(value).__name__}")

    def replace(self, **changes) -> "CRFParams":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def _image_channels_last(image):
    """(H, W, C) view of an image by segpost's layout rule (``_validation.channels_last``), checked."""
    arr, was_torch, _ = channels_last(image)
    h, w, c = arr.shape
    if h == 0 or w == 0 or c == 0:
        raise ValueError(f"image must not be empty, got shape {tuple(np.shape(image))}")
    if c > 16:
        layout = "(C, H, W)" if was_torch else "(H, W, C)"
        raise ValueError(f"image has {c} channels; expected {layout} with at most 16 channels (is the layout right?)")
    if c == 4 and arr.dtype == np.uint8 and arr[..., 3].min() != arr[..., 3].max():
        # A varying fourth 8-bit channel is most likely a PNG's alpha (a constant one separates no two pixels).
        drop = "image[:3]" if was_torch else "image[..., :3]"
        warnings.warn(f"image has 4 channels of 8-bit values: an RGBA picture? Its alpha is read as a fourth colour "
                      f"(pixels of different transparency then count as different colours); pass {drop} to drop it",
                      stacklevel=3)
    return arr


def _image_intensities(arr):
    """An (H, W, C) image in 0..255 units (``_validation.intensity_scale``'s rule): uint8 as it is, any other
    dtype as one float32 copy.

    uint8 images are not copied (add_bilateral divides them into its float32
    features directly: the same values, without a float copy of the image).
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        check_finite(arr, "image", bound=FLOAT32_MAX)
    scale = intensity_scale(arr.dtype.kind, float(arr.min()), float(arr.max()))
    values = arr.astype(np.float32)
    if scale != 1.0:
        np.multiply(values, np.float32(scale), out=values)
    return values


def _scores(logits, probs):
    if (logits is None) == (probs is None):
        raise ValueError("give exactly one of logits (raw scores) or probs= (softmax probabilities)")
    name = "logits" if probs is None else "probs"
    arr, was_torch = to_numpy(logits if probs is None else probs, name)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be floating-point, got dtype {arr.dtype}")
    if arr.ndim != 3:
        raise ValueError(f"{name} must be (C, h, w), got shape {tuple(arr.shape)}")
    if 0 in arr.shape:
        raise ValueError(f"{name} must not be empty, got shape {tuple(arr.shape)}")
    check_finite(arr, name, bound=MAX_CRF_SCORE)
    if arr.shape[0] == 1:  # a sigmoid model's one channel: two classes (see two_class_scores)
        arr = two_class_scores(arr, probabilities=probs is not None)
    elif probs is None:
        refuse_probabilities_as_logits(arr)
    return name, arr, was_torch


def _check_scores_layout(name, shape, height, width):
    """Raise for scores that do not fit the image; warn for the fits that are likely mistakes.

    Warned: scores that fit both as (C, h, w) and as channels-last (h, w, C)
    (read as (C, h, w), segpost's layout); scores whose two axes scale to the
    image by factors more than 1% apart that one cell of rounding does not
    explain (a model's padded input, stretched over the unpadded image).
    """
    num_classes, h, w = shape
    if h > height or w > width:
        raise ValueError(
            f"{name} ({h}x{w}) are larger than the image ({height}x{width}); crf_refine only upsamples: "
            f"resize the {name} or pass the full-resolution image"
        )
    ratio_y, ratio_x = height / h, width / w
    if not _scores_fit_image(h, w, height, width):
        raise ValueError(
            f"{name} of {h}x{w} do not match the aspect ratio of the {height}x{width} image "
            f"(scale {ratio_y:.2f} vs {ratio_x:.2f}); is this the right image, or are the {name} transposed?"
        )
    if num_classes <= height and h <= width and _fits_closely(num_classes, h, height, width):
        warnings.warn(f"{name} of shape {shape} fit the {height}x{width} image both as (C, h, w) and as (h, w, C); "
                      f"they are read as (C, h, w) ({num_classes} classes): if the classes are the last axis, pass "
                      f"np.moveaxis({name}, -1, 0)", stacklevel=3)
    if not _fits_closely(h, w, height, width):
        mismatch = max(ratio_y, ratio_x) / min(ratio_y, ratio_x)
        off = max(abs(h * ratio_x - height), abs(w * ratio_y - width))
        warnings.warn(f"{name} of {h}x{w} scale to the {height}x{width} image by {ratio_y:.2f} and {ratio_x:.2f} "
                      f"({100 * (mismatch - 1):.1f}% apart): if the model saw the image padded, crop the {name} to "
                      f"the image's part first (segpost.crop_to); stretched as they are, labels move by up to "
                      f"{off:.0f} pixels", stacklevel=3)


def _fits_closely(h, w, height, width):
    """The two axes' scales agree within 1%, or one cell of rounding explains the difference."""
    ratio_y, ratio_x = height / h, width / w
    return max(ratio_y, ratio_x) / min(ratio_y, ratio_x) <= 1.01 or _one_cell_apart(h, w, height, width)


def _one_cell_apart(h, w, height, width):
    """Either axis's size predicted from the other axis's scale is within one cell."""
    ratio_y, ratio_x = height / h, width / w
    return abs(h - height / ratio_x) <= 1 or abs(w - width / ratio_y) <= 1


def _scores_fit_image(h, w, height, width):
    """Whether (h, w) scores can come from a (height, width) image by one output stride.

    Either axis's size predicted from the other axis's scale is within one
    cell (a stride's floor or ceiling, or DeepLab's (size - 1) / stride + 1),
    or the two scales agree within _MAX_ASPECT_MISMATCH. Transposed scores of
    a non-square image fail both.
    """
    ratio_y, ratio_x = height / h, width / w
    if max(ratio_y, ratio_x) / min(ratio_y, ratio_x) <= _MAX_ASPECT_MISMATCH:
        return True
    return _one_cell_apart(h, w, height, width)


def _refine_on_device(image, logits, probs, params, iterations, align_corners, return_probs):
    """crf_refine for CUDA tensors: everything on the scores' device (``segpost.crf.device``)."""
    import torch

    from .device import refine

    if (logits is None) == (probs is None):
        raise ValueError("give exactly one of logits (raw scores) or probs= (softmax probabilities)")
    scores = logits if probs is None else probs
    if not is_torch_tensor(scores):
        scores = torch.as_tensor(np.asarray(scores))
    if scores.device.type == "cpu" and is_torch_tensor(image):
        scores = scores.to(image.device)
    return refine(image, scores, probabilities=probs is not None, params=params, iterations=iterations,
                  align_corners=align_corners, return_probs=return_probs)


def crf_refine(image, logits=None, *, probs=None, params=None, iterations=None, align_corners=False,
               return_probs=False, prune=True):
    """Refine a segmentation model's output with a dense CRF.

    The model's scores are upsampled bilinearly to the image size if needed,
    then a fully connected CRF with a smoothness kernel and an appearance
    kernel (see :class:`CRFParams`) snaps the labels to the image's edges.

    Parameters
    ----------
    image : ndarray (H, W, 3) uint8 or torch.Tensor (3, H, W)
        The image the model saw, at full resolution. Also (H, W) gray or any
        number of channels up to 16 (multi-modal). Integers hold 0..255
        whatever their dtype (values beyond raise; an image of 0..2 only
        warns), floats hold [0, 1] (scaled by 255), booleans are 0 / 255.
    logits : (C, h, w) array_like or torch.Tensor, optional
        Raw class scores at any resolution (output stride 1 to 32 ...), any
        float dtype (bfloat16 tensors too). One channel (a sigmoid model's z)
        means two classes, background and z: scores [0, z], whose softmax is
        [1 - sigmoid(z), sigmoid(z)]. Scores that look like softmax
        probabilities (all in [0, 1], summing to 1) raise a ValueError: pass them as probs=.
    probs : (C, h, w) array_like or torch.Tensor, keyword-only, optional
        Softmax probabilities instead of logits (clipped at 1e-5 before the
        log, as pydensecrf's ``unary_from_softmax``); one channel p means
        [1 - p, p]. Exactly one of ``logits`` and ``probs`` must be given: we
        never guess which it is.
    params : CRFParams, "deeplab", "pydensecrf" or dict, keyword-only
        CRF parameters; default DeepLab's (:meth:`CRFParams.deeplab`).
    iterations : int, keyword-only, optional
        Overrides ``params.iterations``.
    align_corners : bool, keyword-only, default False
        Upsampling convention of the scores: False for half-pixel centres
        (PyTorch's default), True for DeepLab/Caffe-style models whose sizes
        are ``(n - 1) * stride + 1``.
    return_probs : bool, keyword-only, default False
        Also return the refined marginals.
    prune : bool or "exact", keyword-only, default True
        Leave out of the mean field the labels that provably no pixel can
        take and that together hold at most a small part of any pixel's
        marginal (``segpost.crf.pruning``: a bound from each label's smallest
        gap below the best unary and the kernels' weights). True: at most
        1e-2, which is the same as changing the kernel weights by at most 1%
        (the kept marginals move by about that much, labels change only
        where the two best are nearly tied; on peaked test logits 99.99% or
        more of the labels are the full CRF's). ``"exact"``: at most 2**-24,
        the full CRF's result up to float32 rounding. False: every label.
        The pruned labels' returned marginals are 0. Logits whose absent
        classes stay about 5-10 or more below the top at every pixel then
        cost about as much as their other classes.

    Returns
    -------
    labels : (H, W) int64
        The refined label map.
    probs : (C, H, W) float32
        With ``return_probs=True``: the CRF's marginals (sum to 1 over C).
        Both are numpy arrays for numpy scores, CPU torch tensors for CPU
        torch scores, and tensors on the device for CUDA tensors: there
        everything (validation, upsampling, lattices, mean field) runs on the
        GPU, on the CUDA lattice when it is built (``SEGPOST_CUDA=1``), else
        on the pure-torch lattice with a warning.

    Raises
    ------
    ValueError
        Both or neither of logits/probs, wrong shapes, NaN/inf, empty image,
        scores larger than the image or with an aspect ratio that does not
        match it, probabilities that do not sum to 1, a
        float image outside [0, 1], bad parameters.
    TypeError
        Non-numeric inputs.
    MemoryError
        When the refinement would need more memory than allowed
        (``SEGPOST_MAX_MEMORY_GB``, default 75% of RAM), before allocating it.

    Examples
    --------
    >>> import numpy as np
    >>> from skimage import data
    >>> from segpost import crf_refine
    >>> image = data.astronaut()[:128, :128]                 # (128, 128, 3) uint8
    >>> rng = np.random.default_rng(0)
    >>> logits = rng.normal(size=(3, 16, 16)).astype(np.float32)  # output stride 8
    >>> labels = crf_refine(image, logits)
    >>> labels.shape, labels.dtype
    ((128, 128), dtype('int64'))
    >>> labels, probs = crf_refine(image, logits, return_probs=True, iterations=5)
    >>> probs.shape
    (3, 128, 128)
    """
    p = CRFParams.coerce(params)
    its = p.iterations if iterations is None else _check_iterations(iterations)
    if any(on_device(x) for x in (image, logits, probs)):
        return _refine_on_device(image, logits, probs, p, its, align_corners, return_probs)
    name, scores, torch_scores = _scores(logits, probs)
    image_view = _image_channels_last(image)
    height, width, channels = image_view.shape
    num_classes, h, w = scores.shape
    _check_scores_layout(name, scores.shape, height, width)
    check_memory(height * width, num_classes, [2, 2 + channels])  # before any image-sized copy
    colors = _image_intensities(image_view)

    if probs is not None:
        # Summed in float64: half-precision (AMP) probabilities round at 1e-3
        # per entry, so they may be off by about C x their epsilon.
        tolerance = max(1e-3, num_classes * float(np.finfo(scores.dtype).eps))
        if scores.min() < -1e-6 or np.abs(scores.sum(axis=0, dtype=np.float64) - 1).max() > tolerance:
            raise ValueError("probs must be non-negative and sum to 1 over axis 0; pass raw scores as logits= instead")

    # Point-major (H*W, C') scores straight from the resize: the layout the CRF
    # runs in, rows padded with zero classes to the kernel's width C' (a
    # multiple of 8; the padding is never read as a class).
    padded = np.zeros((padded_labels(num_classes), h, w), np.float32)
    padded[:num_classes] = scores
    # softmax(-U - P) is unchanged by a per-pixel constant, so -logits is as
    # good a unary as -log softmax(logits): negated in the resize's pass.
    negate = probs is None
    if (h, w) == (height, width):
        full = np.ascontiguousarray(np.moveaxis(padded, 0, -1)).reshape(height * width, -1)
        if negate:
            np.negative(full, out=full)
    else:
        full = _resize_points(padded, (height, width), bool(align_corners), negate=negate)
    if negate:
        unary = full
    else:
        unary = np.negative(np.log(np.clip(full, PROBABILITY_CLIP, 1.0, out=full), out=full), out=full)

    crf = DenseCRF._from_point_major(unary, (height, width), num_labels=num_classes, torch_output=torch_scores)
    if p.pos_weight > 0:
        crf.add_gaussian(p.pos_xy, compat=p.pos_weight)
    if p.bi_weight > 0:
        crf.add_bilateral(colors, p.bi_xy, p.bi_rgb, compat=p.bi_weight)
    if prune is not False:
        from .pruning import mass_budget, worth_checking

        budget = mass_budget(prune)
        coarse_unary = -scores if probs is None else -np.log(np.clip(scores, PROBABILITY_CLIP, 1.0))
        prune = prune if budget is not None and worth_checking(coarse_unary, num_classes, budget) else False
    q, labels = crf._infer_points(its, return_q=return_probs, prune=prune)
    labels = like_input(labels.reshape(height, width), torch_scores)
    if not return_probs:
        return labels
    marginals = np.ascontiguousarray(q.T).reshape(num_classes, height, width)
    return labels, like_input(marginals, torch_scores)
