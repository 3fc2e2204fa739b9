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
    is_torch_tensor, max_sum_error, on_device, refuse_probabilities_as_logits, to_numpy, two_class_scores,
    value_range, warn,
)
from ..lattice import lattice_bytes

__all__ = ["PROBABILITY_CLIP", "RefineInputs", "refine_inputs", "check_memory", "check_device_memory",
           "padded_labels", "scores_fit_image"]

# pydensecrf's unary_from_softmax clips probabilities here before the log.
PROBABILITY_CLIP = 1e-5
# Logits may be coarser than the image by any output stride, but both axes by
# about the same factor: a larger mismatch means the wrong image or transposed logits.
_MAX_ASPECT_MISMATCH = 1.5
# Images carry at most this many channels (the appearance kernel's lattice has 2 + channels dimensions).
MAX_IMAGE_CHANNELS = 16


@dataclasses.dataclass(frozen=True)
class RefineInputs:
    """What both crf_refine paths run on, checked.

    ``scores``: (C, h, w), two classes for a one-channel input; a numpy array
    of the caller's float dtype on the CPU path, a float32 tensor on
    ``device`` otherwise. ``colours``: the image as (H, W, M) in 0..255
    units; numpy uint8 (not copied) or float32 on the CPU path, a float32
    tensor on ``device`` otherwise. ``returns``: the results' type, the
    scores' own: "numpy", "torch" (CPU tensors) or "device".
    """

    name: str
    scores: Any
    colours: Any
    device: Any
    returns: str

    @property
    def probabilities(self) -> bool:
        return self.name == "probs"

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


def refine_inputs(image, logits, probs, *, device=None) -> RefineInputs:
    """Check and convert crf_refine's ``image`` and scores (``logits`` or ``probs``) once.

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
    view = _image_channels_last(image, device)
    height, width, channels = view.shape
    _check_scores_layout(name, tuple(scores.shape), height, width)
    # Before any image-sized copy.
    if device is None:
        check_memory(height * width, scores.shape[0], [2, 2 + channels])
    else:
        check_device_memory(height * width, scores.shape[0], [2, 2 + channels], device)
    colours = _intensities(view)
    if device is not None:
        import torch

        scores, colours = (torch.as_tensor(np.ascontiguousarray(x)) if not is_torch_tensor(x) else x
                           for x in (scores, colours))
        scores, colours = scores.to(device, torch.float32), colours.to(device, torch.float32)
    return RefineInputs(name, scores, colours, device, returns)


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
    if scores.ndim != 3:
        raise ValueError(f"{name} must be (C, h, w), got shape {tuple(scores.shape)}")
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


def _image_channels_last(image, device):
    """(H, W, C) view of an image by segpost's layout rule (``_validation.channels_last``), checked; a tensor
    on the device path when the image is one."""
    arr, was_torch, _ = channels_last(image, keep_device=device is not None)
    h, w, c = arr.shape
    if h == 0 or w == 0 or c == 0:
        raise ValueError(f"image must not be empty, got shape {tuple(np.shape(image))}")
    if c > MAX_IMAGE_CHANNELS:
        layout = "(C, H, W)" if was_torch else "(H, W, C)"
        raise ValueError(f"image has {c} channels; expected {layout} with at most {MAX_IMAGE_CHANNELS} channels "
                         f"(is the layout right?)")
    if c == 4 and _is_uint8(arr):
        alpha_lo, alpha_hi = value_range(arr[..., 3])
        if alpha_lo != alpha_hi:
            # A varying fourth 8-bit channel is most likely a PNG's alpha (a constant one separates no two pixels).
            drop = "image[:3]" if was_torch else "image[..., :3]"
            warn(f"image has 4 channels of 8-bit values: an RGBA picture? Its alpha is read as a fourth "
                 f"colour (pixels of different transparency then count as different colours); pass {drop} "
                 f"to drop it")
    return arr


def _is_uint8(arr) -> bool:
    """numpy uint8 or torch.uint8."""
    return str(arr.dtype) in ("uint8", "torch.uint8")


def _intensities(view):
    """An (H, W, C) image in 0..255 units (``_validation.intensity_scale``'s rule): numpy uint8 as it is, any
    other image as one float32 copy (numpy, or a tensor on its device).

    uint8 numpy images are not copied (add_bilateral divides them into its
    float32 features directly: the same values, without a float copy of the image).
    """
    kind = dtype_kind(view)
    if not is_torch_tensor(view) and _is_uint8(view):
        return view
    if kind == "f":
        check_finite(view, "image", bound=FLOAT32_MAX)
    scale = intensity_scale(kind, *value_range(view))
    if is_torch_tensor(view):
        import torch

        values = view.to(torch.float32)  # the caller's own tensor when it is float32: never written to
        return values if scale == 1.0 else values * float(np.float32(scale))
    values = view.astype(np.float32)
    if scale != 1.0:
        np.multiply(values, np.float32(scale), out=values)
    return values


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
    if not scores_fit_image(h, w, height, width):
        raise ValueError(
            f"{name} of {h}x{w} do not match the aspect ratio of the {height}x{width} image "
            f"(scale {ratio_y:.2f} vs {ratio_x:.2f}); is this the right image, or are the {name} transposed?"
        )
    if num_classes <= height and h <= width and _fits_closely(num_classes, h, height, width):
        warn(f"{name} of shape {shape} fit the {height}x{width} image both as (C, h, w) and as (h, w, C); "
             f"they are read as (C, h, w) ({num_classes} classes): if the classes are the last axis, pass "
             f"np.moveaxis({name}, -1, 0)")
    if not _fits_closely(h, w, height, width):
        mismatch = max(ratio_y, ratio_x) / min(ratio_y, ratio_x)
        off = max(abs(h * ratio_x - height), abs(w * ratio_y - width))
        warn(f"{name} of {h}x{w} scale to the {height}x{width} image by {ratio_y:.2f} and {ratio_x:.2f} "
             f"({100 * (mismatch - 1):.1f}% apart): if the model saw the image padded, crop the {name} to "
             f"the image's part first (segpost.crop_to); stretched as they are, labels move by up to "
             f"{off:.0f} pixels")


def _fits_closely(h, w, height, width):
    """The two axes' scales agree within 1%, or one cell of rounding explains the difference."""
    ratio_y, ratio_x = height / h, width / w
    return max(ratio_y, ratio_x) / min(ratio_y, ratio_x) <= 1.01 or _one_cell_apart(h, w, height, width)


def _one_cell_apart(h, w, height, width):
    """Either axis's size predicted from the other axis's scale is within one cell."""
    ratio_y, ratio_x = height / h, width / w
    return abs(h - height / ratio_x) <= 1 or abs(w - width / ratio_y) <= 1


def scores_fit_image(h, w, height, width):
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
