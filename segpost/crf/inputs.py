"""crf_refine's inputs, checked and converted once for every device.

:func:`refine_inputs` is the one front end of ``crf_refine``: the CPU path
(``refine.py``, numpy around the C++ CRF) and the device path (``device.py``,
torch ops on the scores' device) both start from the :class:`RefineInputs`
it returns, so every rule below (dtypes, shapes, finiteness and bounds,
one-channel scores, probabilities passed as logits, sums to one, the image's
layout and intensities, the scores' fit to the image, the memory estimate)
and every message exists once. The statistics are computed where the data
lives (``_validation``'s helpers take numpy arrays and tensors alike); the
rules are applied to plain numbers.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .._memory import check_working_set
from .._validation import (
    FLOAT32_MAX, MAX_CRF_SCORE, channels_last, check_finite, dtype_kind, dtype_name, intensity_scale,
    is_torch_tensor, max_sum_error, on_device, per_axis, refuse_probabilities_as_logits, to_numpy,
    two_class_scores, value_range, warn,
)
from ..lattice import lattice_bytes

__all__ = ["PROBABILITY_CLIP", "RefineInputs", "refine_inputs", "check_memory", "check_device_memory",
           "padded_labels", "scores_fit_image"]

# pydensecrf's unary_from_softmax clips probabilities here before the log.
PROBABILITY_CLIP = 1e-5
# Logits may be coarser than the image by any output stride, but both axes by
# about the same factor: a larger mismatch means the wrong image or transposed logits.
_MAX_ASPECT_MISMATCH = 1.5
#: segpost's one rule for the appearance kernel's intensity units (``bi_rgb``; see ``_validation.intensity_scale``).
INTENSITY_RULE = (
    "An image (scores (C, h, w)) is read in 0..255 units: integers as they are, floats in [0, 1] scaled by "
    "255, booleans as 0 / 255. A volume (scores (C, d, h, w)) is read in its own units: Hounsfield units for "
    "CT, the scanner's units for MRI (standardise those first: (x - mean) / std, and give bi_rgb in standard "
    "deviations)."
)
# Images carry at most this many channels (the appearance kernel's lattice has 2 + channels dimensions).
MAX_IMAGE_CHANNELS = 16


@dataclasses.dataclass(frozen=True)
class RefineInputs:
    """What both crf_refine paths run on, checked.

    ``scores``: (C, h, w), or (C, d, h, w) for a volume, two classes for a
    one-channel input; a numpy array of the caller's float dtype on the CPU
    path, a float32 tensor on ``device`` otherwise. ``colours``: the image
    as (H, W, M) in 0..255 units, a volume as (D, H, W, M) in its own units
    (:data:`INTENSITY_RULE`); numpy uint8 (not copied) or float32 on the CPU
    path, a float32 tensor on ``device`` otherwise. ``spacing``: float64
    per spatial axis. ``returns``: the results' type, the scores' own:
    "numpy", "torch" (CPU tensors) or "device".
    """

    name: str
    scores: Any
    colours: Any
    spacing: Any
    device: Any
    returns: str

    @property
    def probabilities(self) -> bool:
        return self.name == "probs"

    @property
    def spatial_shape(self) -> tuple:
        """(H, W) of an image, (D, H, W) of a volume."""
        return tuple(self.colours.shape[:-1])

    def output(self, result):
        """A result (numpy on the CPU path, a device tensor otherwise) as the type the caller gave the scores."""
        if is_torch_tensor(result):
            if self.returns == "device":
                return result
            result = result.cpu()
            return result if self.returns == "torch" else result.numpy()
        if self.returns == "numpy":
            return result
        import torch

        return torch.from_numpy(np.ascontiguousarray(result))


def refine_inputs(image, logits, probs, *, spacing=None, device=None) -> RefineInputs:
    """Check and convert crf_refine's ``image`` and scores (``logits`` or ``probs``) once.

    ``spacing``: the size of a step along each spatial axis (a voxel's, in
    millimetres say), default 1.

    ``device``: run the torch-ops path on this torch device (the tests pass
    the CPU to run it without a GPU); by default the device of whichever
    input is on an accelerator (the scores' first), else the CPU path.
    """
    if (logits is None) == (probs is None):
        raise ValueError("give exactly one of logits (raw scores) or probs= (softmax probabilities)")
    name, raw = ("logits", logits) if probs is None else ("probs", probs)
    if device is None:
        device = next((x.device for x in (raw, image) if on_device(x)), None)
    returns = "device" if on_device(raw) else ("torch" if is_torch_tensor(raw) else "numpy")
    scores = _checked_scores(name, raw, device)
    ndim = scores.ndim - 1
    if ndim == 2 and spacing is not None and np.size(spacing) == 3:
        raise ValueError(f"{name} of shape {tuple(scores.shape)} are an image's (C, h, w), but spacing has three "
                         f"axes: a (D, H, W) scan needs (C, d, h, w) {name} (a 2-D model's slices stacked on axis 1)")
    spacing = np.ones(ndim) if spacing is None else per_axis(spacing, ndim, "spacing")
    view = _image_channels_last(image, device, ndim)
    spatial, channels = tuple(view.shape[:-1]), view.shape[-1]
    try:
        # One channel (a sigmoid model's, made two classes above) has no classes axis to misplace.
        _check_scores_layout(name, tuple(scores.shape), spatial, classes_last_warning=np.shape(raw)[0] > 1)
    except ValueError as error:
        hint = _other_layout_hint(image, ndim, name, tuple(scores.shape))
        if hint is None:
            raise
        raise ValueError(f"{hint} (read as it is: {error})") from None
    # Before any image-sized copy.
    points, dims = int(np.prod(spatial)), [ndim, ndim + channels]
    if device is None:
        check_memory(points, scores.shape[0], dims)
    else:
        check_device_memory(points, scores.shape[0], dims, device)
    colours = _intensities(view)
    if device is not None:
        import torch

        scores, colours = (torch.as_tensor(np.ascontiguousarray(x)) if not is_torch_tensor(x) else x
                           for x in (scores, colours))
        scores, colours = scores.to(device, torch.float32), colours.to(device, torch.float32)
    return RefineInputs(name, scores, colours, spacing, device, returns)


def _checked_scores(name, raw, device):
    """The scores after every check: numpy on the CPU path; a tensor (on its own device) on the device path."""
    if device is not None and is_torch_tensor(raw):
        scores = raw.detach()
        if scores.is_complex():
            raise TypeError(f"{name} must be real-valued, got dtype {dtype_name(scores)}")
    else:
        scores, _ = to_numpy(raw, name)
    if dtype_kind(scores) != "f":
        raise TypeError(f"{name} must be floating-point, got dtype {dtype_name(scores)}")
    if scores.ndim not in (3, 4):
        raise ValueError(f"{name} must be (C, h, w) for an image or (C, d, h, w) for a volume, got shape "
                         f"{tuple(scores.shape)}")
    if 0 in scores.shape:
        raise ValueError(f"{name} must not be empty, got shape {tuple(scores.shape)}")
    # Half-precision (AMP) probabilities round at about eps per entry: their sums are off by up to C x eps.
    eps = float(_finfo(raw).eps)
    check_finite(scores, name, bound=MAX_CRF_SCORE)
    if scores.shape[0] == 1:  # a sigmoid model's one channel: two classes (see two_class_scores)
        scores = two_class_scores(scores, probabilities=name == "probs")
    elif name == "logits":
        refuse_probabilities_as_logits(scores)
    if name == "probs":
        tolerance = max(1e-3, scores.shape[0] * eps)
        if value_range(scores)[0] < -1e-6 or max_sum_error(scores) > tolerance:
            raise ValueError("probs must be non-negative and sum to 1 over axis 0; pass raw scores as logits= instead")
    return scores


def _finfo(raw):
    if is_torch_tensor(raw):
        import torch

        return torch.finfo(raw.dtype)
    return np.finfo(np.asarray(raw).dtype)


def _image_channels_last(image, device, ndim):
    """(*spatial, C) view of an image or volume by segpost's layout rule (``_validation.channels_last``),
    checked; a tensor on the device path when the image is one."""
    arr, was_torch, _ = channels_last(image, keep_device=device is not None, spatial_ndim=ndim)
    c = arr.shape[-1]
    if 0 in arr.shape:
        raise ValueError(f"image must not be empty, got shape {tuple(np.shape(image))}")
    if c > MAX_IMAGE_CHANNELS:
        layout = _layout(ndim, was_torch)
        if ndim == 2:
            volume = ("; a (D, H, W) scan? it needs (C, d, h, w) scores, not an image's (C, h, w)"
                      if len(np.shape(image)) == 3 else "")
        else:
            volume = f"; {_other_scan_layout_fix(was_torch)}"
        raise ValueError(f"image has {c} channels; expected {layout} with at most {MAX_IMAGE_CHANNELS} channels "
                         f"(is the layout right?){volume}")
    if ndim == 2 and c == 4 and _is_uint8(arr):
        alpha_lo, alpha_hi = value_range(arr[..., 3])
        if alpha_lo != alpha_hi:
            # A varying fourth 8-bit channel is most likely a PNG's alpha (a constant one separates no two pixels).
            drop = "image[:3]" if was_torch else "image[..., :3]"
            warn(f"image has 4 channels of 8-bit values: an RGBA picture? Its alpha is read as a fourth "
                 f"colour (pixels of different transparency then count as different colours); pass {drop} "
                 f"to drop it")
    return arr


def _other_layout_hint(image, ndim, name, shape):
    """For a multi-modal scan whose scores fit it read in the other library's layout ((M, D, H, W) for
    numpy, (D, H, W, M) for torch): the sentence that says so, else None."""
    if ndim != 3 or len(np.shape(image)) != 4:
        return None
    torch_layout = is_torch_tensor(image)
    other = tuple(np.shape(image))[:3] if torch_layout else tuple(np.shape(image))[1:]
    try:
        _check_scores_layout(name, shape, other, classes_last_warning=False)
    except ValueError:
        return None
    library = "torch" if torch_layout else "numpy"
    return f"{library} scans are {_layout(3, torch_layout)}: {_other_scan_layout_fix(torch_layout)}"


def _other_scan_layout_fix(torch_layout):
    """How to pass a scan given in the other library's layout."""
    if torch_layout:
        return "a (D, H, W, M) tensor? pass scan.permute(3, 0, 1, 2)"
    return "an (M, D, H, W) array? pass np.moveaxis(scan, 0, -1)"


def _layout(ndim, was_torch):
    if ndim == 2:
        return "(C, H, W)" if was_torch else "(H, W, C)"
    return "(M, D, H, W)" if was_torch else "(D, H, W, M)"


def _is_uint8(arr) -> bool:
    """numpy uint8 or torch.uint8."""
    return str(arr.dtype) in ("uint8", "torch.uint8")


def _intensities(view):
    """The image's intensities in the units ``bi_rgb`` is given in (:data:`INTENSITY_RULE`): numpy uint8 as it
    is, anything else as one float32 copy (numpy, or a tensor on its device).

    uint8 numpy images are not copied (add_bilateral divides them into its
    float32 features directly: the same values, without a float copy of the image).
    """
    kind = dtype_kind(view)
    if kind == "f":
        check_finite(view, "image", bound=FLOAT32_MAX)
    # An image (H, W, C) is read in 0..255 units; a volume (D, H, W, M) in its own. (uint8 too: its scale is
    # 1, but the rule warns for a dim one, a label map passed as the image.)
    scale = intensity_scale(kind, *value_range(view)) if view.ndim == 3 else 1.0
    if not is_torch_tensor(view) and _is_uint8(view):
        return view
    if is_torch_tensor(view):
        import torch

        values = view.to(torch.float32)  # the caller's own tensor when it is float32: never written to
        return values if scale == 1.0 else values * float(np.float32(scale))
    values = view.astype(np.float32)
    if scale != 1.0:
        np.multiply(values, np.float32(scale), out=values)
    return values


def _check_scores_layout(name, shape, image_shape, *, classes_last_warning=True):
    """Raise for scores that do not fit the image; warn for the fits that are likely mistakes.

    ``shape``: the scores' (C, *spatial); ``image_shape``: the image's
    spatial shape (a volume's axes are only checked against the image's,
    one by one). Warned: scores that fit both as (C, *spatial) and as
    channels-last (*spatial, C) (read as (C, *spatial), segpost's layout)
    where the channels-last reading is no less likely (an image's) or the
    likelier one (a volume's: small sizes fit some stride on any axis);
    scores whose axes scale to the image by factors more than 1% apart that
    one cell of rounding does not explain (a model's padded input, stretched
    over the unpadded image).
    """
    num_classes, sizes = shape[0], tuple(shape[1:])
    scores_text, image_text = "x".join(map(str, sizes)), "x".join(map(str, image_shape))
    # 4-D scores are a volume's: a batch of images says so (crf_refine's batch=True).
    batch_hint = " (a batch of 2-D images? pass batch=True)" if len(sizes) == 3 else ""
    if any(s > size for s, size in zip(sizes, image_shape)):
        raise ValueError(
            f"{name} ({scores_text}) are larger than the image ({image_text}); crf_refine only upsamples: "
            f"resize the {name} or pass the full-resolution image{batch_hint}"
        )
    if len(sizes) == 3:
        # A 3-D network's output stride differs between axes as often as not ((1, 4, 4) on thick slices):
        # a volume's axes are not compared with each other, but each must be a whole stride of the scan's.
        for axis, (s, size) in enumerate(zip(sizes, image_shape)):
            if not _whole_stride(s, size):
                raise ValueError(
                    f"{name} of {scores_text} do not fit the {image_text} scan: axis {axis} ({s} of {size}) is no "
                    f"whole output stride of it (floor or ceiling of {size} / stride); are the axes in the scan's "
                    f"order (NIfTI readers give (x, y, z), segpost expects the array's own order)? Otherwise "
                    f"resize the {name} first (segpost.resize_logits){batch_hint}")
        # Small sizes are the floor or ceiling of some stride on any axis, so "fits" says little: the
        # classes-last reading is warned about only when it is the likelier one (_layout_likelihood). (A
        # (3, 32, 32, 32) output of a 32x128x128 scan, strides (1, 4, 4), is not 32 classes of (3, 32, 32);
        # full-resolution scores are not classes-last scores at strides (8, 4, 1).)
        if classes_last_warning:
            _warn_if_channels_last(name, shape, num_classes, sizes, image_shape, image_text,
                                   lambda s, size: all(_whole_stride(a, b) for a, b in zip(s, size))
                                   and _layout_likelihood(s, size) > _layout_likelihood(sizes, size))
        return
    ratios = [size / s for s, size in zip(sizes, image_shape)]
    ratios_text = " vs ".join(f"{r:.2f}" for r in ratios)
    if not scores_fit_image(sizes, image_shape):
        raise ValueError(
            f"{name} of {scores_text} do not match the aspect ratio of the {image_text} image "
            f"(scale {ratios_text}); is this the right image, or are the {name} transposed?"
        )
    if classes_last_warning:
        # An image's classes-last reading is warned about when it fits and is no less likely: (16, 16, 16)
        # logits of a 128x128 image are either; (65, 64, 64) of a 512x512 one are 65 classes at stride 8,
        # not 64 classes of a 65x64 grid that one cell of rounding would let fit.
        _warn_if_channels_last(name, shape, num_classes, sizes, image_shape, image_text,
                               lambda s, size: _fits_closely(s, size)
                               and _layout_likelihood(s, size) >= _layout_likelihood(sizes, size))
    if not _fits_closely(sizes, image_shape):
        mismatch = max(ratios) / min(ratios)
        off = max(abs(s * r - size) for s, size in zip(sizes, image_shape) for r in ratios)
        warn(f"{name} of {scores_text} scale to the {image_text} image by {' and '.join(f'{r:.2f}' for r in ratios)} "
             f"({100 * (mismatch - 1):.1f}% apart): if the model saw the image padded, crop the {name} to "
             f"the image's part first (segpost.crop_to); stretched as they are, labels move by up to "
             f"{off:.0f} pixels")


def _warn_if_channels_last(name, shape, num_classes, sizes, image_shape, image_text, fits):
    """Warns when the scores also fit the image read with their classes last (as the layout rule does not)."""
    channels_last_sizes = (num_classes, *sizes[:-1])
    if all(s <= size for s, size in zip(channels_last_sizes, image_shape)) and fits(channels_last_sizes, image_shape):
        spatial = "(C, h, w)" if len(sizes) == 2 else "(C, d, h, w)"
        last = "(h, w, C)" if len(sizes) == 2 else "(d, h, w, C)"
        warn(f"{name} of shape {shape} fit the {image_text} image both as {spatial} and as {last}; "
             f"they are read as {spatial} ({num_classes} classes): if the classes are the last axis, pass "
             f"np.moveaxis({name}, -1, 0)")


def _layout_likelihood(sizes, image_shape):
    """How likely scores of spatial ``sizes`` are a network's output for ``image_shape``: the axes whose
    size divides the image's exactly, plus one when the last two axes' strides are equal."""
    exact = sum(size % s == 0 for s, size in zip(sizes, image_shape))
    return exact + (image_shape[-2] * sizes[-1] == image_shape[-1] * sizes[-2])


def _whole_stride(s, size):
    """``s`` is ``floor(size / stride)`` or ``ceil(size / stride)`` of some whole stride (the latter also
    DeepLab's ``(size - 1) // stride + 1``)."""
    return any(s in (size // stride, -(-size // stride)) for stride in range(1, size + 1))


def _pairs(sizes, image_shape):
    """Each pair of axes as (h, w, height, width)."""
    n = len(sizes)
    return [(sizes[i], sizes[j], image_shape[i], image_shape[j]) for i in range(n) for j in range(i + 1, n)]


def _fits_closely(sizes, image_shape):
    """Every two axes' scales agree within 1%, or one cell of rounding explains the difference."""
    return all(_pair_fits(*pair, tolerance=1.01) for pair in _pairs(sizes, image_shape))


def _pair_fits(h, w, height, width, *, tolerance):
    """Two axes' scales agree within ``tolerance``, or either axis's size predicted from the other axis's
    scale is within one cell."""
    ratio_y, ratio_x = height / h, width / w
    if max(ratio_y, ratio_x) / min(ratio_y, ratio_x) <= tolerance:
        return True
    return abs(h - height / ratio_x) <= 1 or abs(w - width / ratio_y) <= 1


def scores_fit_image(sizes, image_shape):
    """Whether scores of spatial ``sizes`` can come from an image of ``image_shape`` by one output stride.

    For every two axes: either axis's size predicted from the other axis's
    scale is within one cell (a stride's floor or ceiling, or DeepLab's
    (size - 1) / stride + 1), or the two scales agree within
    _MAX_ASPECT_MISMATCH. Transposed scores of a non-square image fail.
    """
    return all(_pair_fits(*pair, tolerance=_MAX_ASPECT_MISMATCH) for pair in _pairs(sizes, image_shape))


# ------------------------------------------------------------------ memory


def padded_labels(num_labels: int) -> int:
    """Labels rounded up to a multiple of 8: the compiled kernel's row width."""
    return -(-int(num_labels) // 8) * 8


def check_memory(num_points: int, num_labels: int, feature_dims) -> None:
    """Raise MemoryError before allocating a CPU CRF whose working set would exceed the limit."""
    labels_padded = padded_labels(num_labels)
    per_label_arrays = 4 + 2 * len(feature_dims)  # unary, q, q copy, messages; filtered + scratch per term
    estimate = num_points * labels_padded * 4 * per_label_arrays
    estimate += sum(lattice_bytes(num_points, d) for d in feature_dims)
    check_working_set(estimate, f"this CRF ({num_points} points x {num_labels} labels, {len(feature_dims)} pairwise "
                                f"terms)", "downscale the image, refine it in tiles")


def check_device_memory(num_points, num_classes, feature_dims, device):
    """MemoryError before allocating a GPU CRF that cannot fit in the device's free memory (no check elsewhere)."""
    import torch

    if device.type != "cuda":
        return
    # Scores, Q, messages, the resize and a filter's input/output per class; per term the corners'
    # vertex ids, weights and CSR entries and about as many vertex rows of C floats, twice (blur).
    estimate = num_points * num_classes * 4 * 8
    estimate += sum(num_points * (d + 1) * (4 + 4 + 4 + 8 + 2 * num_classes * 4) for d in feature_dims)
    free, _ = torch.cuda.mem_get_info(device)
    if estimate > free:
        raise MemoryError(f"this CRF needs about {estimate / 2**30:.1f} GiB of GPU memory ({num_points} points x "
                          f"{num_classes} labels), more than the {free / 2**30:.1f} GiB free on {device}; downscale "
                          f"the image or refine it in tiles")
